"""Connection-level limits aiohttp does not have: a deadline for a request's headers and a cap on
open connections.

aiohttp keeps a connection that never finishes its request headers open forever (a slowloris
client sends a byte every few seconds), and accepts as many connections as the process has file
descriptors; thousands of such sockets crowd out the agents' real streams. ``GuardedSite`` is
``web.TCPSite`` with every accepted connection wrapped: the first request's headers must arrive
within ``header_timeout_s`` or the connection is closed, and beyond ``max_connections`` open ones a
new connection is closed at once. After the headers the wrapper only forwards (the WebSocket
start-frame deadline and ``max_unstarted_connections`` take over in the server)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field

from aiohttp import web

__all__ = ["ConnectionGuard", "GuardedSite"]

_HEADERS_END = b"\r\n\r\n"


@dataclass
class ConnectionGuard:
    """Limits and counters shared by every connection of one site (event-loop only)."""

    header_timeout_s: float
    max_connections: int
    on_refusal: Callable[[str], None] = field(default=lambda reason: None)
    open: int = 0
    refused_at_cap: int = 0
    closed_slow: int = 0


class _GuardedProtocol(asyncio.Protocol):
    """Forwards everything to aiohttp's ``RequestHandler``; watches only the first headers."""

    def __init__(self, inner: asyncio.Protocol, guard: ConnectionGuard) -> None:
        self._inner = inner
        self._guard = guard
        self._transport: asyncio.Transport | None = None
        self._timer: asyncio.TimerHandle | None = None
        self._tail = b""
        self._counted = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        guard = self._guard
        if guard.open >= guard.max_connections:
            guard.refused_at_cap += 1
            guard.on_refusal("too_many_connections")
            transport.abort()  # before aiohttp sees it: nothing to clean up
            return
        guard.open += 1
        self._counted = True
        self._transport = transport
        loop = asyncio.get_running_loop()
        self._timer = loop.call_later(guard.header_timeout_s, self._headers_too_slow)
        self._inner.connection_made(transport)

    def _headers_too_slow(self) -> None:
        self._timer = None
        self._guard.closed_slow += 1
        self._guard.on_refusal("slow_headers")
        if self._transport is not None:
            self._transport.abort()

    def data_received(self, data: bytes) -> None:
        if not self._counted:
            return
        if self._timer is not None:
            # The end of the headers may straddle two reads: keep the last three bytes.
            seen = self._tail + data
            if _HEADERS_END in seen:
                self._timer.cancel()
                self._timer = None
                self._tail = b""
            else:
                self._tail = seen[-3:]
        self._inner.data_received(data)

    def eof_received(self) -> bool | None:
        return self._inner.eof_received() if self._counted else None

    def connection_lost(self, exc: Exception | None) -> None:
        if not self._counted:
            return
        self._counted = False
        self._guard.open -= 1
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self._inner.connection_lost(exc)

    def pause_writing(self) -> None:
        self._inner.pause_writing()

    def resume_writing(self) -> None:
        self._inner.resume_writing()


class GuardedSite(web.TCPSite):
    """``web.TCPSite`` whose connections go through a :class:`ConnectionGuard`."""

    def __init__(
        self, runner: web.BaseRunner, host: str, port: int, guard: ConnectionGuard
    ) -> None:
        super().__init__(runner, host, port)
        self.guard = guard

    async def start(self) -> None:
        await web.BaseSite.start(self)  # registers the site with its runner
        factory = self._runner.server
        assert factory is not None
        guard = self.guard

        def protocol() -> asyncio.Protocol:
            return _GuardedProtocol(factory(), guard)

        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            protocol,
            self._host,
            self._port,
            backlog=self._backlog,
            reuse_address=self._reuse_address,
            reuse_port=self._reuse_port,
        )
        sockets = self._server.sockets
        self._bound_port = sockets[0].getsockname()[1] if sockets else self._port
