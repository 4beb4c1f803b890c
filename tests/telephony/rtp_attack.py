"""Spoofed RTP for ``test_rtp_spoofing.py``: G.711 u-law speech and RFC 4733 key presses sent
from sockets that are not the caller's, and a client for rtpengine's control protocol ("ng":
``<cookie> <bencoded dict>`` over UDP) to find a live call's relay ports."""

from __future__ import annotations

import os
import socket
import struct
import time
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.caller.audio import Pcm

__all__ = ["Leg", "call_legs", "pcmu", "send_attack"]

PT_PCMU = 0
PT_EVENTS = 101  # what baresip offers for telephone-event; livekit-sip's answer keeps it
FRAME = 160  # 20 ms at 8 kHz


def pcmu(samples: Pcm) -> bytes:
    """G.711 u-law (ITU-T G.711, the classic segment encoder) of 16-bit samples."""
    x = samples.astype(np.int32)
    sign = np.where(x < 0, 0x80, 0)
    mag = np.minimum(np.abs(x), 32635) + 0x84
    exponent = np.floor(np.log2(mag)).astype(np.int32) - 7
    mantissa = (mag >> (exponent + 3)) & 0x0F
    return bytes((~(sign | (exponent << 4) | mantissa) & 0xFF).astype(np.uint8))


def _rtp(pt: int, seq: int, ts: int, ssrc: int, payload: bytes, marker: bool = False) -> bytes:
    return struct.pack("!BBHII", 0x80, pt | (0x80 if marker else 0), seq, ts, ssrc) + payload


def send_attack(sock: socket.socket, dest: tuple[str, int], speech: Pcm, key: int) -> int:
    """Send ``speech`` (8 kHz) as 20 ms PCMU packets at real-time pace, then the RFC 4733 event
    for ``key`` (3 updates, 3 end packets), from ``sock`` to ``dest``; the packets sent."""
    ssrc = int.from_bytes(os.urandom(4), "big")
    seq = int.from_bytes(os.urandom(2), "big")
    ts = int.from_bytes(os.urandom(4), "big") & 0x7FFFFFFF
    encoded = pcmu(speech)
    sent = 0
    start = time.monotonic()
    for i in range(0, len(encoded) - FRAME + 1, FRAME):
        sock.sendto(_rtp(PT_PCMU, seq & 0xFFFF, ts, ssrc, encoded[i : i + FRAME], sent == 0), dest)
        seq, ts, sent = seq + 1, ts + FRAME, sent + 1
        time.sleep(max(0.0, start + sent * 0.02 - time.monotonic()))
    for i, end in enumerate((False, False, False, True, True, True)):
        duration = FRAME * (i + 1) if not end else FRAME * 4
        payload = struct.pack("!BBH", key, (0x80 if end else 0) | 10, duration)
        sock.sendto(_rtp(PT_EVENTS, seq & 0xFFFF, ts, ssrc, payload, i == 0), dest)
        seq, sent = seq + 1, sent + 1
        time.sleep(0.02)
    return sent


# -- rtpengine's ng protocol ----------------------------------------------------------------------


def _bencode(value: Any) -> bytes:
    if isinstance(value, int):
        return b"i%de" % value
    if isinstance(value, str):
        value = value.encode()
    if isinstance(value, bytes):
        return b"%d:%s" % (len(value), value)
    if isinstance(value, list):
        return b"l" + b"".join(map(_bencode, value)) + b"e"
    items = sorted(value.items())
    return b"d" + b"".join(_bencode(k) + _bencode(v) for k, v in items) + b"e"


def _bdecode(data: bytes, i: int = 0) -> tuple[Any, int]:
    head = data[i : i + 1]
    if head == b"i":
        end = data.index(b"e", i)
        return int(data[i + 1 : end]), end + 1
    if head in (b"l", b"d"):
        i += 1
        items: list[Any] = []
        while data[i : i + 1] != b"e":
            item, i = _bdecode(data, i)
            items.append(item)
        return (items if head == b"l" else dict(zip(items[::2], items[1::2], strict=True))), i + 1
    colon = data.index(b":", i)
    size = int(data[i:colon])
    return data[colon + 1 : colon + 1 + size].decode(errors="replace"), colon + 1 + size


def _ng(command: dict[str, Any], address: tuple[str, int]) -> dict[str, Any]:
    cookie = os.urandom(6).hex().encode()
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.settimeout(2.0)
        sock.sendto(cookie + b" " + _bencode(command), address)
        data = sock.recv(65_535)
    reply, _ = _bdecode(data.split(b" ", 1)[1])
    assert reply.get("result") == "ok", reply
    return dict(reply)


@dataclass(frozen=True)
class Leg:
    """One side of a relayed call: where it sends its RTP to (the relay's port for it) and the
    address:port the relay accepts that side's RTP from (its own SDP's)."""

    relay: tuple[str, int]
    endpoint: tuple[str, int]


def call_legs(control: tuple[str, int]) -> list[Leg]:
    """The RTP legs of the newest call the relay at ``control`` carries (an earlier test's call
    may still be ending: livekit-sip ends a call whose caller vanished after its media
    timeout, and the relay deletes the session on that BYE)."""
    calls = _ng({"command": "list"}, control)["calls"]
    assert calls, "the relay carries no call"
    sessions = [_ng({"command": "query", "call-id": c}, control) for c in calls]
    newest = max(sessions, key=lambda q: (int(q["created"]), int(q.get("created_us", 0))))
    legs = []
    for tag in newest["tags"].values():
        for media in tag["medias"]:
            for stream in media["streams"]:
                if "RTP" in stream["flags"]:
                    end = stream["endpoint"]
                    legs.append(
                        Leg(
                            (stream["local address"], stream["local port"]),
                            (end["address"], end["port"]),
                        )
                    )
    return legs
