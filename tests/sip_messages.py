"""Well-formed SIP messages for tests that attack or load livekit-sip and the SIP edge: one
INVITE builder with an SDP offer, as a PBX would send it (the torture suite mutates it, the flood
sends it as is)."""

from __future__ import annotations

import uuid

__all__ = ["invite", "sdp"]


def sdp(ip: str = "127.0.0.1", port: int = 5998) -> str:
    """A PCMU + telephone-event audio offer from ``ip``:``port``."""
    return (
        "v=0\r\n"
        f"o=- 1 1 IN IP4 {ip}\r\n"
        "s=-\r\n"
        f"c=IN IP4 {ip}\r\n"
        "t=0 0\r\n"
        f"m=audio {port} RTP/AVP 0 101\r\n"
        "a=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )


def invite(
    host: str,
    port: int,
    number: str,
    *,
    source: tuple[str, int] = ("127.0.0.1", 5999),
    user: str = "torture",
    call_id: str | None = None,
    body: str | None = None,
) -> str:
    """An INVITE for ``number`` at ``host``:``port`` from ``source``; a fresh Call-ID, branch
    and tag unless ``call_id`` is given; ``body`` defaults to :func:`sdp` from the source."""
    call_id = call_id or uuid.uuid4().hex
    body = body if body is not None else sdp(source[0])
    src = f"{source[0]}:{source[1]}"
    return (
        f"INVITE sip:{number}@{host}:{port} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src};branch=z9hG4bK{call_id[:12]}\r\n"
        "Max-Forwards: 70\r\n"
        f"To: <sip:{number}@{host}>\r\n"
        f'From: "{user.title()}" <sip:{user}@{source[0]}>;tag={call_id[:8]}\r\n'
        f"Call-ID: {call_id}@{source[0]}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:{user}@{src}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body.encode())}\r\n"
        "\r\n"
        f"{body}"
    )
