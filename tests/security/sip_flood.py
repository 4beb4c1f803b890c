"""An INVITE flood from one source address: well-formed INVITEs (new Call-ID, branch and tag
each) at a fixed rate, the replies counted. Test support for ``test_sip_flood.py``."""

from __future__ import annotations

import socket
import threading
import time
import uuid
from collections import Counter
from dataclasses import dataclass, field

__all__ = ["Flood", "invite"]


def invite(source: tuple[str, int], target: tuple[str, int], number: str) -> bytes:
    """One INVITE with an SDP offer, as a PBX would send it, from ``source``."""
    tag = uuid.uuid4().hex
    src = f"{source[0]}:{source[1]}"
    body = (
        f"v=0\r\no=- 1 1 IN IP4 {source[0]}\r\ns=-\r\nc=IN IP4 {source[0]}\r\nt=0 0\r\n"
        "m=audio 40000 RTP/AVP 0 101\r\na=rtpmap:0 PCMU/8000\r\n"
        "a=rtpmap:101 telephone-event/8000\r\n"
    )
    host = f"{target[0]}:{target[1]}"
    return (
        f"INVITE sip:{number}@{host} SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {src};branch=z9hG4bK{tag[:16]}\r\n"
        "Max-Forwards: 70\r\n"
        f"From: <sip:flood@{source[0]}>;tag={tag[16:24]}\r\n"
        f"To: <sip:{number}@{target[0]}>\r\n"
        f"Call-ID: {tag}@{source[0]}\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:flood@{src}>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


@dataclass
class Flood:
    """Send INVITEs from ``source_ip`` to ``target`` at ``rate_per_s`` in a thread until
    :meth:`stop`; ``sent`` and the first lines of the ``replies`` are counted."""

    source_ip: str
    target: tuple[str, int]
    number: str
    rate_per_s: float
    sent: int = 0
    replies: Counter[str] = field(default_factory=Counter)
    elapsed_s: float = 0.0
    _stop: threading.Event = field(default_factory=threading.Event)
    _thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sip-flood", daemon=True)
        self._thread.start()

    def stop(self) -> float:
        """Stop and return the seconds it ran."""
        self._stop.set()
        assert self._thread is not None
        self._thread.join(timeout=10)
        return self.elapsed_s

    def _run(self) -> None:
        with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
            sock.bind((self.source_ip, 0))
            sock.setblocking(False)
            source = sock.getsockname()
            started = time.monotonic()
            while not self._stop.is_set():
                sock.sendto(invite(source, self.target, self.number), self.target)
                self.sent += 1
                self._drain(sock)
                delay = started + self.sent / self.rate_per_s - time.monotonic()
                if delay > 0:
                    self._stop.wait(delay)
            self.elapsed_s = time.monotonic() - started
            time.sleep(0.5)
            self._drain(sock)

    def _drain(self, sock: socket.socket) -> None:
        while True:
            try:
                data = sock.recv(65_535)
            except (BlockingIOError, ConnectionRefusedError):
                return
            self.replies[data.split(b"\r\n", 1)[0].decode(errors="replace")] += 1
