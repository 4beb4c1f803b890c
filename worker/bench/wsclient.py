"""A minimal client for one inference-server stream (docs/inference-protocol.md).

One :class:`ServerStream` wraps one WebSocket: the first frame names the op, then JSON verbs
and binary audio go out, and JSON events or binary audio come back. Error frames become
:class:`StreamError` carrying the protocol's error code, so callers can tell a refusal
(``overloaded``) from a failure.
"""

from __future__ import annotations

import json
from typing import Any

import aiohttp

from worker.inference.protocol import auth_headers

__all__ = ["ServerStream", "StreamError"]

OVERLOADED = "overloaded"


class StreamError(Exception):
    """The stream ended abnormally: an error frame from the server (``code`` is the protocol
    code), or a transport problem (``code`` is ``connect``, ``closed`` or ``protocol``)."""

    def __init__(self, code: str, message: str) -> None:
        super().__init__(f"{code}: {message}")
        self.code = code
        self.message = message

    @property
    def refused(self) -> bool:
        """Whether the server refused the work for lack of capacity."""
        return self.code == OVERLOADED


class ServerStream:
    """One open stream. Use :meth:`open`, then ``send_*``/:meth:`recv`, then :meth:`aclose`."""

    def __init__(self, ws: aiohttp.ClientWebSocketResponse, op: str) -> None:
        self._ws = ws
        self.op = op

    @classmethod
    async def open(
        cls, session: aiohttp.ClientSession, url: str, start: dict[str, Any]
    ) -> ServerStream:
        """Connect to ``url`` (``ws://host:port/v1/stream``) and send the start frame."""
        try:
            ws = await session.ws_connect(
                url, autoclose=False, max_msg_size=8 * 1024 * 1024, headers=auth_headers()
            )
        except (aiohttp.ClientError, OSError) as err:
            raise StreamError("connect", f"cannot open {start.get('op')} stream: {err}") from err
        stream = cls(ws, str(start.get("op")))
        try:
            await ws.send_str(json.dumps(start))
        except (aiohttp.ClientError, ConnectionError) as err:
            await ws.close()
            raise StreamError("closed", f"{stream.op} stream closed at start: {err}") from err
        return stream

    @property
    def closed(self) -> bool:
        return self._ws.closed

    async def send_json(self, msg: dict[str, Any]) -> None:
        """Send one JSON verb (``flush``, ``end_input``, ``push_text`` ...)."""
        try:
            await self._ws.send_str(json.dumps(msg))
        except (aiohttp.ClientError, ConnectionError) as err:
            raise StreamError("closed", f"{self.op} stream closed while sending: {err}") from err

    async def send_bytes(self, data: bytes) -> None:
        """Send one binary audio frame."""
        try:
            await self._ws.send_bytes(data)
        except (aiohttp.ClientError, ConnectionError) as err:
            raise StreamError("closed", f"{self.op} stream closed while sending: {err}") from err

    async def recv(self) -> dict[str, Any] | bytes:
        """The next event (a JSON object) or audio frame (bytes).

        Raises :class:`StreamError` for an error frame, or when the socket closes; a caller
        that expects the close (after ``done``) simply stops calling.
        """
        msg = await self._ws.receive()
        if msg.type is aiohttp.WSMsgType.BINARY:
            data: bytes = msg.data
            return data
        if msg.type is aiohttp.WSMsgType.TEXT:
            try:
                event = json.loads(msg.data)
            except json.JSONDecodeError as err:
                raise StreamError("protocol", f"{self.op}: invalid JSON from server") from err
            if not isinstance(event, dict):
                raise StreamError("protocol", f"{self.op}: expected a JSON object from server")
            if event.get("type") == "error":
                raise StreamError(str(event.get("code")), str(event.get("message", "")))
            return event
        if msg.type is aiohttp.WSMsgType.ERROR:
            raise StreamError("closed", f"{self.op} stream failed: {self._ws.exception()}")
        raise StreamError("closed", f"{self.op} stream closed by the server ({msg.type.name})")

    async def aclose(self) -> None:
        """Close the socket; an unfinished stream is thereby cancelled on the server."""
        if not self._ws.closed:
            await self._ws.close()
