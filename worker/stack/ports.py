"""Free loopback ports for tests and the loopback profile, and "is this port taken" checks.

Ports are picked by binding port 0 and releasing it; another process can grab it in between,
which the supervisor's pre-flight check then reports clearly instead of a child failing late.
"""

from __future__ import annotations

import random
import socket
from typing import Literal

__all__ = ["Proto", "free_port", "free_udp_range", "free_udp_tcp_port", "port_in_use"]

Proto = Literal["tcp", "udp"]


def _socket(proto: Proto, host: str) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    kind = socket.SOCK_STREAM if proto == "tcp" else socket.SOCK_DGRAM
    sock = socket.socket(family, kind)
    if proto == "tcp":
        # Servers set SO_REUSEADDR, so a port in TIME_WAIT is usable; a listening one is not.
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    return sock


def port_in_use(host: str, port: int, proto: Proto = "tcp") -> bool:
    """True when ``host:port`` cannot be bound for ``proto`` right now."""
    with _socket(proto, host) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return True
    return False


def free_port(host: str = "127.0.0.1", proto: Proto = "tcp") -> int:
    """A port the kernel considers free on ``host`` (chosen by binding port 0)."""
    with _socket(proto, host) as sock:
        sock.bind((host, 0))
        port: int = sock.getsockname()[1]
    return port


def free_udp_tcp_port(host: str = "127.0.0.1", attempts: int = 50) -> int:
    """A port free on ``host`` for UDP and TCP alike (SIP listeners bind both)."""
    for _ in range(attempts):
        port = free_port(host, "udp")
        if not port_in_use(host, port, "tcp"):
            return port
    raise RuntimeError(f"no port free for both UDP and TCP on {host}")


def free_udp_range(count: int, host: str = "127.0.0.1", attempts: int = 200) -> tuple[int, int]:
    """``count`` consecutive UDP ports that are all free on ``host`` and on 0.0.0.0.

    livekit-sip binds its RTP ports on all interfaces, hence the second check. The range is
    drawn below the kernel's ephemeral range (32768+) so outgoing sockets rarely collide.
    """
    rng = random.Random()
    for _ in range(attempts):
        start = rng.randrange(20000, 32000 - count)
        ports = range(start, start + count)
        if not any(port_in_use(h, p, "udp") for p in ports for h in (host, "0.0.0.0")):
            return start, start + count - 1
    raise RuntimeError(f"no {count} consecutive free UDP ports found on {host}")
