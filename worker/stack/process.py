"""What the supervisor needs to know about one child process, and how to probe its health.

A :class:`ProcessSpec` is plain data: argv, environment, log file, health check, timeouts and
the ports it will bind. Other parts of the project build specs for their own processes (the
inference server with ``GET /readyz``, the agent worker) and hand them to the
:class:`~worker.stack.supervisor.Supervisor`.
"""

from __future__ import annotations

import asyncio
import os
import shutil
import signal
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from worker.stack.ports import Proto, port_in_use

__all__ = [
    "HealthCheck",
    "PortSpec",
    "ProcessSpec",
    "SpecError",
    "preflight",
    "probe",
]


class SpecError(RuntimeError):
    """A child cannot be started: missing binary, port already taken, bad spec."""


@dataclass(frozen=True)
class HealthCheck:
    """How to tell that a child is ready.

    ``http``: ``GET path`` answers one of ``ok_statuses``; ``tcp``: a connection is accepted;
    ``redis``: ``PING`` answers ``+PONG`` (or ``-NOAUTH``, which also proves redis is up);
    ``rtpengine``: an ng-protocol ``ping`` over UDP answers ``pong``.
    """

    kind: Literal["http", "tcp", "redis", "rtpengine"]
    host: str
    port: int
    path: str = "/"
    ok_statuses: tuple[int, ...] = (200,)

    def describe(self) -> str:
        if self.kind == "http":
            codes = "/".join(str(c) for c in self.ok_statuses)
            return f"GET http://{self.host}:{self.port}{self.path} -> {codes}"
        return f"{self.kind} {self.host}:{self.port}"


@dataclass(frozen=True)
class PortSpec:
    """A port the child binds; checked free before the child starts."""

    host: str
    port: int
    proto: Proto = "tcp"


@dataclass(frozen=True)
class ProcessSpec:
    """One supervised child process.

    ``argv[0]`` is a path or a name looked up on ``PATH``. ``env`` is added to the parent's
    environment (``inherit_env=False`` starts from an empty one). ``log_path`` defaults to
    ``<run_dir>/<name>.log``. ``stop_signal`` is sent to the child's whole process group on
    shutdown; after ``stop_timeout_s`` the group gets SIGKILL. ``repeat_stop_signal`` sends the
    stop signal a second time at half the timeout (for servers where a second signal means
    "force", like livekit-server; leave it off for drains that must run their full time).
    """

    name: str
    argv: tuple[str, ...]
    env: Mapping[str, str] = field(default_factory=dict)
    inherit_env: bool = True
    log_path: Path | None = None
    health: HealthCheck | None = None
    start_timeout_s: float = 30.0
    stop_signal: int = signal.SIGTERM
    stop_timeout_s: float = 10.0
    repeat_stop_signal: bool = False
    ports: tuple[PortSpec, ...] = ()
    cwd: Path | None = None
    restart: bool = True
    liveness_failures: int = 0
    """Once healthy, ``health`` is probed every ``liveness_interval_s``; this many failures in a
    row (a hung process, a dead engine thread, a lost helper process) kill the child's group so
    that it is restarted like a crash. 0: no liveness probing (the child must exit to be
    restarted)."""
    liveness_interval_s: float = 1.0

    def executable(self) -> str | None:
        """Absolute path of ``argv[0]`` if it exists and is executable, else None."""
        exe = self.argv[0]
        if os.sep in exe:
            return exe if os.access(exe, os.X_OK) and Path(exe).is_file() else None
        return shutil.which(exe)

    def full_env(self) -> dict[str, str]:
        base = dict(os.environ) if self.inherit_env else {}
        base.update(self.env)
        return base


def preflight(specs: list[ProcessSpec]) -> list[str]:
    """Problems that must stop the whole start: missing binaries, taken ports, duplicates."""
    problems: list[str] = []
    names = [s.name for s in specs]
    for dup in sorted({n for n in names if names.count(n) > 1}):
        problems.append(f"two children are named {dup!r}")
    for spec in specs:
        if not spec.argv:
            problems.append(f"{spec.name}: empty command line")
            continue
        if spec.executable() is None:
            problems.append(f"{spec.name}: binary {spec.argv[0]!r} not found or not executable")
        for port in spec.ports:
            if port_in_use(port.host, port.port, port.proto):
                problems.append(
                    f"{spec.name}: {port.proto} port {port.host}:{port.port} is already in use "
                    "(another process listens there; stop it or choose another port)"
                )
    return problems


# asyncio.timeout, not asyncio.wait_for: on Python 3.11 wait_for can swallow a cancellation
# that arrives as the inner await completes (bpo-42130), which made `up` miss a Ctrl-C.
async def _http_status(host: str, port: int, path: str, limit_s: float) -> int:
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            request = f"GET {path} HTTP/1.0\r\nHost: {host}:{port}\r\nConnection: close\r\n\r\n"
            writer.write(request.encode("ascii"))
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    parts = line.decode("latin-1").split()
    if len(parts) < 2 or not parts[1].isdigit():
        return 0
    return int(parts[1])


async def _redis_ping(host: str, port: int, limit_s: float) -> bool:
    async with asyncio.timeout(limit_s):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"PING\r\n")
            await writer.drain()
            line = await reader.readline()
        finally:
            writer.close()
    return line.startswith((b"+PONG", b"-NOAUTH"))


class _NgPing(asyncio.DatagramProtocol):
    def __init__(self, cookie: bytes) -> None:
        self.cookie = cookie
        self.answer: asyncio.Future[bytes] = asyncio.get_running_loop().create_future()

    def datagram_received(self, data: bytes, addr: tuple[str | Any, int]) -> None:
        if data.startswith(self.cookie + b" ") and not self.answer.done():
            self.answer.set_result(data[len(self.cookie) + 1 :])


async def _rtpengine_ping(host: str, port: int, limit_s: float) -> bool:
    """rtpengine's control protocol: ``<cookie> <bencoded dict>`` over UDP, answered with the
    same cookie. Retried inside the limit: UDP may drop the first datagram."""
    cookie = os.urandom(6).hex().encode()
    loop = asyncio.get_running_loop()
    transport, proto = await loop.create_datagram_endpoint(
        lambda: _NgPing(cookie), remote_addr=(host, port)
    )
    try:
        async with asyncio.timeout(limit_s):
            while True:
                transport.sendto(cookie + b" d7:command4:pinge")
                done, _ = await asyncio.wait({proto.answer}, timeout=0.25)
                if done:
                    return b"6:result4:pong" in proto.answer.result()
    finally:
        transport.close()


async def probe(check: HealthCheck, limit_s: float = 2.0) -> bool:
    """One health probe; False (never an exception) when the child is not ready."""
    try:
        if check.kind == "http":
            status = await _http_status(check.host, check.port, check.path, limit_s)
            return status in check.ok_statuses
        if check.kind == "redis":
            return await _redis_ping(check.host, check.port, limit_s)
        if check.kind == "rtpengine":
            return await _rtpengine_ping(check.host, check.port, limit_s)
        async with asyncio.timeout(limit_s):
            _, writer = await asyncio.open_connection(check.host, check.port)
        writer.close()
        return True
    except (OSError, TimeoutError, asyncio.IncompleteReadError):
        return False
