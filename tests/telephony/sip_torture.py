"""Hostile SIP for livekit-sip: messages in the spirit of RFC 4475 (SIP torture tests: valid but
tortuous, and invalid ones a parser must reject without harm) and a seeded fuzz of an INVITE's
headers and SDP. Written from the RFC's list of cases, not copied from it.

Every message names a number no trunk has (``+19990000000``), so one that happens to parse
as a valid INVITE is refused by livekit-sip's trunk matching and never becomes a call.
"""

from __future__ import annotations

import random

from sip_messages import invite
from sip_messages import sdp as sip_sdp

__all__ = ["fuzzed_invites", "torture_messages"]

TARGET = "+19990000000"


def _invite(host: str, port: int, *, call_id: str | None = None, sdp: str | None = None) -> str:
    return invite(host, port, TARGET, call_id=call_id, body=sdp)


def torture_messages(host: str, port: int) -> dict[str, bytes]:
    """Named hostile messages (RFC 4475 section 3 categories), as UDP payloads."""
    good = _invite(host, port)
    head, _, body = good.partition("\r\n\r\n")

    def replace(old: str, new: str) -> bytes:
        return _invite(host, port).replace(old, new, 1).encode()

    out: dict[str, bytes] = {
        # 3.1.1 valid but tortuous
        "short_forms_and_folding": good.replace("Via:", "v:\r\n ", 1)
        .replace("Call-ID:", "i:", 1)
        .replace("Content-Type:", "c:", 1)
        .encode(),
        "case_and_whitespace": good.replace(
            "Max-Forwards: 70", "mAx-fOrWaRdS   :    70", 1
        ).encode(),
        "escaped_request_uri": replace(f"INVITE sip:{TARGET}@", "INVITE sip:%2B1999%300000000@"),
        "unknown_method": replace("INVITE sip:", "NEWMETHOD sip:"),
        # 3.1.2 invalid
        "content_length_too_big": replace("Content-Length: ", "Content-Length: 9999"),
        "content_length_negative": head.encode().replace(b"Content-Length: ", b"Content-Length: -")
        + b"\r\n\r\n"
        + body.encode(),
        "overlarge_scalars": replace("CSeq: 1 INVITE", "CSeq: 36893488147419103232 INVITE").replace(
            b"Max-Forwards: 70", b"Max-Forwards: 300000000000"
        ),
        "unterminated_quote": replace('"Torture"', '"Torture'),
        "angle_bracket_request_uri": replace(
            f"INVITE sip:{TARGET}@{host}:{port} SIP/2.0",
            f"INVITE <sip:{TARGET}@{host}:{port}> SIP/2.0",
        ),
        "lws_in_request_uri": replace(f"INVITE sip:{TARGET}@", f"INVITE sip:{TARGET} @"),
        "multiple_sp_in_request_line": replace("INVITE sip:", "INVITE      sip:"),
        "unknown_sip_version": replace(" SIP/2.0\r\nVia", " SIP/7.0\r\nVia"),
        "cseq_method_mismatch": replace("CSeq: 1 INVITE", "CSeq: 1 ACK"),
        "overlarge_response_code": (
            b"SIP/2.0 4294967301 better not break the receiver\r\n"
            b"Via: SIP/2.0/UDP 127.0.0.1:5999;branch=z9hG4bKresp\r\n"
            b"Call-ID: resp@127.0.0.1\r\nCSeq: 1 INVITE\r\nFrom: <sip:a@b>;tag=1\r\n"
            b"To: <sip:c@d>\r\nContent-Length: 0\r\n\r\n"
        ),
        "missing_call_id": replace("Call-ID:", "X-Not-Call-ID:"),
        "missing_via": replace("Via:", "X-Not-Via:"),
        "missing_from_and_to": replace("From:", "X-From:").replace(b"To:", b"X-To:"),
        "zero_max_forwards": replace("Max-Forwards: 70", "Max-Forwards: 0"),
        "nul_in_header": replace("Contact: <sip:", "Contact: <sip:\x00\x00"),
        "format_strings": replace('"Torture"', '"%s%s%s%n%n%x"'),
        "huge_header": replace(
            "Max-Forwards: 70", "X-Big: " + "A" * 60_000 + "\r\nMax-Forwards: 70"
        ),
        "many_vias": replace(
            "Max-Forwards: 70",
            "".join(
                f"Via: SIP/2.0/UDP 10.0.0.{i % 250}:5060;branch=z9hG4bK{i}\r\n" for i in range(600)
            )
            + "Max-Forwards: 70",
        ),
        "sdp_garbage": _invite(
            host, port, sdp="v=0\r\nm=audio 99999 RTP/AVP 999\r\n%%%\r\n"
        ).encode(),
        "sdp_binary": _invite(host, port, sdp="\xff\xfe\x00" * 50).encode("latin-1"),
        "sdp_many_codecs": _invite(
            host,
            port,
            sdp=sip_sdp().replace("RTP/AVP 0 101", "RTP/AVP " + " ".join(map(str, range(128)))),
        ).encode(),
        "empty": b"",
        "crlf_keepalive": b"\r\n\r\n",
        "binary_garbage": bytes(random.Random(1).randrange(256) for _ in range(1200)),
        "request_line_only": f"INVITE sip:{TARGET}@{host} SIP/2.0\r\n\r\n".encode(),
    }
    return out


def fuzzed_invites(host: str, port: int, count: int, seed: int = 4475) -> list[bytes]:
    """``count`` INVITEs with seeded random damage to their headers and SDP."""
    rng = random.Random(seed)
    nasty = ["", "A" * 4096, "%s%n" * 20, "\x00", "\xff\xfe", "-1", "99999999999999999999",
             "<sip:", ";;;;", "\r\n", '"', "sip:" + "x" * 300 + "@"]  # fmt: skip
    out: list[bytes] = []
    for _ in range(count):
        lines = _invite(host, port, call_id=f"fuzz{rng.getrandbits(64):x}").split("\r\n")
        for _ in range(rng.randint(1, 4)):
            i = rng.randrange(1, len(lines))  # keep the request line: it names TARGET
            op = rng.randrange(5)
            if op == 0:
                del lines[i]
            elif op == 1:
                lines.insert(i, lines[i])
            elif op == 2 and ":" in lines[i]:
                name = lines[i].split(":", 1)[0]
                lines[i] = f"{name}: {rng.choice(nasty)}"
            elif op == 3:
                text = lines[i]
                j = rng.randrange(len(text) + 1)
                lines[i] = text[:j] + rng.choice(nasty) + text[j:]
            else:
                lines[i] = lines[i][: rng.randrange(len(lines[i]) + 1)]
        out.append("\r\n".join(lines).encode("utf-8", "surrogateescape"))
    return out
