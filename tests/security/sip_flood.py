"""An INVITE flood from one source address: well-formed INVITEs (new Call-ID, branch and tag
each) at a fixed rate, the replies counted. Test support for ``test_sip_flood.py``."""

from __future__ import annotations

import socket
import threading
import time
from collections import Counter
from dataclasses import dataclass, field

from sip_messages import invite

__all__ = ["Flood"]


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
                message = invite(*self.target, self.number, source=source, user="flood")
                sock.sendto(message.encode(), self.target)
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
