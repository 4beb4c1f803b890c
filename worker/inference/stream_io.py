"""One stream's WebSocket: size-checked receives and serialized sends, shared by the op handlers.

``receive`` turns everything the client can do into one of: a text frame (str), an audio frame
(bytes), ``None`` (the client closed or vanished), or a :class:`StreamError`.
"""

from __future__ import annotations

import asyncio
import json
import time
from dataclasses import dataclass, field
from typing import Any, TypeVar

from aiohttp import WSMsgType, web

from worker.config.inference import InferenceConfig
from worker.inference.jobs import EngineSet
from worker.inference.metrics import InferenceMetrics
from worker.inference.protocol import ErrorCode, StreamError
from worker.inference.runtime import Overloaded, Terminal, Work, WorkState

__all__ = ["ClientGone", "StreamContext", "await_terminal", "cancel_and_wait"]

R = TypeVar("R")


class ClientGone(Exception):
    """The client closed the socket or vanished; its work must be cancelled."""


@dataclass
class StreamContext:
    """What an op handler needs: the socket, the engines, limits and metrics."""

    ws: web.WebSocketResponse
    engines: EngineSet
    config: InferenceConfig
    metrics: InferenceMetrics
    stream_id: str
    _send_lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    async def receive(self) -> str | bytes | None:
        """The next text or binary frame; None once the client is gone."""
        limits = self.config.limits
        msg = await self.ws.receive()
        if msg.type == WSMsgType.TEXT:
            data: str = msg.data
            # A str of n chars encodes to n..4n bytes: encode only when it could be too big.
            if len(data) > limits.max_text_frame_bytes or (
                len(data) * 4 > limits.max_text_frame_bytes
                and len(data.encode("utf-8")) > limits.max_text_frame_bytes
            ):
                raise StreamError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"text frame larger than {limits.max_text_frame_bytes} bytes",
                )
            return data
        if msg.type == WSMsgType.BINARY:
            payload: bytes = msg.data
            if len(payload) > limits.max_audio_frame_bytes:
                raise StreamError(
                    ErrorCode.PAYLOAD_TOO_LARGE,
                    f"audio frame of {len(payload)} bytes is larger than "
                    f"{limits.max_audio_frame_bytes} bytes",
                )
            return payload
        if msg.type == WSMsgType.ERROR:
            # aiohttp already closed the socket (e.g. 1009 for a frame over max_msg_size).
            raise ClientGone(f"websocket error: {msg.data}")
        return None  # CLOSE, CLOSING, CLOSED

    async def send_json(self, obj: dict[str, Any]) -> None:
        await self._send(json.dumps(obj, ensure_ascii=False))

    async def send_bytes(self, data: bytes) -> None:
        await self._send(data)

    async def _send(self, data: str | bytes) -> None:
        # One sender at a time: interim, final and audio tasks share the socket.
        async with self._send_lock:
            if self.ws.closed:
                raise ClientGone("socket closed")
            try:
                if isinstance(data, str):
                    await self.ws.send_str(data)
                else:
                    await self.ws.send_bytes(data)
            except ConnectionResetError as err:
                raise ClientGone(str(err)) from None

    def observe_stage(self, stage: str, since: float) -> None:
        self.metrics.stage_latency.labels(stage).observe(time.monotonic() - since)


async def cancel_and_wait(*tasks: asyncio.Future[Any]) -> None:
    """Cancel helper tasks and wait until they are gone. Their own errors are dropped (the
    caller already handled or superseded them); the caller's own cancellation still
    propagates, because awaiting a gather that gets cancelled raises CancelledError here."""
    for task in tasks:
        task.cancel()
    await asyncio.gather(*tasks, return_exceptions=True)


async def await_terminal(work: Work[Any, R], engine: str) -> Terminal[R]:
    """Await ``work``'s terminal event and return it unless it failed: a failure becomes the
    stream's error (``overloaded`` when the scheduler refused it late, else ``internal`` naming
    ``engine``). However this ends (the stream being cancelled included) the work is cancelled,
    so the engine frees its slot; cancelling a finished item is a no-op."""
    try:
        event = await work.wait()
    finally:
        work.cancel()
    if event.state == WorkState.FAILED:
        if isinstance(event.error, Overloaded):
            raise StreamError(ErrorCode.OVERLOADED, str(event.error))
        raise StreamError(ErrorCode.INTERNAL, f"{engine} engine failed: {event.error}")
    return event
