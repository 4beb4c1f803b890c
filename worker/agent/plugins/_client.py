"""One WebSocket stream to the inference server (docs/inference-protocol.md), shared by the
STT, LLM and TTS plugins.

The server speaks one stream per connection; this module opens it, maps the protocol's error
frames and transport failures onto livekit-agents' ``APIError`` family (so the framework's
retry logic does the right thing), and closes the socket on every exit path: closing the
socket is how a cancelled stream reaches the engine and frees its slot.
"""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Callable, Coroutine
from dataclasses import dataclass
from typing import Any

import aiohttp
from livekit.agents import APIConnectionError, APIError, APIStatusError, APITimeoutError, utils
from livekit.agents.utils import aio

from worker.inference.protocol import auth_headers

__all__ = [
    "InferenceClient",
    "InferencePlugin",
    "InferenceStream",
    "ServerError",
    "StreamDeadlines",
    "StreamMessage",
    "get_json",
    "run_duplex",
]

# Error codes of the protocol mapped to an HTTP-like status, so that APIStatusError decides
# retryability the way livekit-agents expects: 4xx are the client's fault (never retried),
# 503 means "try again" (models loading), 500 is an engine failure (a fresh stream may work).
_ERROR_STATUS: dict[str, int] = {
    "bad_request": 400,
    "unknown_op": 400,
    "payload_too_large": 413,
    "overloaded": 429,
    "not_ready": 503,
    "internal": 500,
}


class ServerError(APIStatusError):
    """The inference server sent an ``error`` frame; ``code`` is the protocol's error code."""

    def __init__(self, code: str, message: str) -> None:
        status = _ERROR_STATUS.get(code, 500)
        # "overloaded" means the server is at capacity: retrying the same server right away
        # only adds load, so it is final for this stream (the worker's load report stops
        # new dispatches instead).
        retryable = code in ("not_ready", "internal")
        super().__init__(
            f"inference server error {code}: {message}",
            status_code=status,
            body={"code": code, "message": message},
            retryable=retryable,
        )
        self.code = code


@dataclass(frozen=True)
class StreamMessage:
    """One frame from the server: a JSON object (``data``) or audio bytes (``audio``)."""

    data: dict[str, Any] | None = None
    audio: bytes | None = None


@dataclass(frozen=True)
class StreamDeadlines:
    """How long a stream may wait for the server once an answer is due, per op, and the
    WebSocket ping interval (no pong within half of it fails the stream). ``None``: no
    deadline. An LLM stream owes tokens from its start; STT and TTS streams say when an
    answer is due (:meth:`InferenceStream.expect`)."""

    stt: float | None = None
    llm: float | None = None
    llm_first: float | None = None
    """The LLM's first token (the prompt's prefill comes first); ``None``: ``llm``."""
    tts: float | None = None
    heartbeat: float | None = None

    def for_op(self, op: str) -> float | None:
        value: float | None = getattr(self, op, None)
        return value


_POLL_S = 0.25  # how often a reader waiting for a due answer checks its deadline


class InferenceStream:
    """An open stream: send JSON or audio, iterate server frames. Use ``async with``.

    With a ``reply_timeout``, :meth:`messages` raises ``APITimeoutError`` when an answer is
    due (:meth:`expect` was called more often than :meth:`satisfied`) and the server sent
    nothing for that long: a hung engine never hangs a turn.
    """

    def __init__(
        self,
        ws: aiohttp.ClientWebSocketResponse,
        *,
        reply_timeout: float | None = None,
        expect_now: bool = False,
        first_reply_timeout: float | None = None,
    ) -> None:
        self._ws = ws
        self._reply_timeout = reply_timeout
        # Until the first frame arrives (``expect_now`` streams), this one applies instead.
        self._first_timeout = first_reply_timeout if expect_now else None
        self._due = 1 if expect_now else 0
        self._due_since = time.monotonic()

    def expect(self) -> None:
        """One more answer is due (an STT flush, a TTS flush or end of input)."""
        if self._due == 0:
            self._due_since = time.monotonic()
        self._due += 1

    def satisfied(self) -> None:
        """One due answer arrived (an STT final, a TTS clause's end)."""
        self._due = max(0, self._due - 1)
        self._due_since = time.monotonic()

    async def _receive(self) -> aiohttp.WSMessage:
        if self._reply_timeout is None:
            return await self._ws.receive()
        while True:
            try:
                msg = await self._ws.receive(timeout=_POLL_S)
            except TimeoutError:
                limit = self._first_timeout or self._reply_timeout
                if self._due and time.monotonic() - self._due_since > limit:
                    raise APITimeoutError(
                        f"inference server sent nothing for {limit:g} s while an answer was due"
                    ) from None
                continue
            self._due_since = time.monotonic()  # any frame is progress
            self._first_timeout = None
            return msg

    async def send_json(self, obj: dict[str, Any]) -> None:
        """Send one JSON text frame; a vanished server raises ``APIConnectionError``."""
        try:
            await self._ws.send_str(json.dumps(obj))
        except (aiohttp.ClientError, ConnectionError) as err:
            raise APIConnectionError(f"inference server connection lost: {err}") from err

    async def send_audio(self, pcm: bytes) -> None:
        """Send one binary frame of PCM s16le mono."""
        try:
            await self._ws.send_bytes(pcm)
        except (aiohttp.ClientError, ConnectionError) as err:
            raise APIConnectionError(f"inference server connection lost: {err}") from err

    async def messages(self) -> AsyncIterator[StreamMessage]:
        """Server frames until the server closes the stream.

        An ``error`` frame raises :class:`ServerError`; a socket that closes abnormally raises
        ``APIConnectionError``. A normal close after the stream's final frame just ends the
        iteration: callers check they saw ``done``.
        """
        while True:
            msg = await self._receive()
            if msg.type == aiohttp.WSMsgType.TEXT:
                try:
                    data = json.loads(msg.data)
                except json.JSONDecodeError as err:
                    raise APIError(f"inference server sent invalid JSON: {err}") from err
                if not isinstance(data, dict):
                    raise APIError("inference server sent a non-object JSON frame")
                if data.get("type") == "error":
                    raise ServerError(str(data.get("code", "")), str(data.get("message", "")))
                yield StreamMessage(data=data)
            elif msg.type == aiohttp.WSMsgType.BINARY:
                yield StreamMessage(audio=bytes(msg.data))
            elif msg.type == aiohttp.WSMsgType.ERROR:
                raise APIConnectionError(f"inference server stream failed: {self._ws.exception()}")
            else:  # CLOSE / CLOSING / CLOSED
                break

    async def aclose(self) -> None:
        """Close the socket (the server treats it as a cancellation if the stream is live)."""
        if not self._ws.closed:
            await self._ws.close()

    async def __aenter__(self) -> InferenceStream:
        return self

    async def __aexit__(self, *exc: object) -> None:
        # Shield the close so that a cancelled caller still tells the server to stop the work;
        # the CancelledError itself propagates unchanged.
        await asyncio.shield(self.aclose())


async def get_json(base_url: str, path: str, *, timeout_s: float) -> tuple[int, Any]:
    """One ``GET`` of the inference server's ``path``: ``(status, JSON body or None)``;
    ``(0, None)`` when it does not answer in ``timeout_s`` (health and capacity probes)."""
    url = base_url.rstrip("/") + path
    try:
        async with (
            aiohttp.ClientSession(trust_env=False, headers=auth_headers()) as http,
            http.get(url, timeout=aiohttp.ClientTimeout(timeout_s)) as resp,
        ):
            try:
                return resp.status, await resp.json(content_type=None)
            except ValueError:
                return resp.status, None
    except (aiohttp.ClientError, OSError, TimeoutError):
        return 0, None


Loop = Callable[[InferenceStream], Coroutine[Any, Any, None]]


async def run_duplex(stream: InferenceStream, send: Loop, recv: Loop, *, name: str) -> None:
    """Run ``send(stream)`` and ``recv(stream)`` side by side until both return, then close.

    The first one to fail (or a cancellation of the caller) cancels the other and waits for
    it, and the stream is closed on every exit, so the server stops the work either way.
    ``name`` prefixes the task names (``NAME.send``, ``NAME.recv``).
    """
    async with stream:
        tasks = [
            asyncio.create_task(send(stream), name=f"{name}.send"),
            asyncio.create_task(recv(stream), name=f"{name}.recv"),
        ]
        try:
            await asyncio.gather(*tasks)
        finally:
            await aio.cancel_and_wait(*tasks)


class InferenceClient:
    """Opens streams to one inference server. One instance per plugin; ``aclose`` when done.

    ``base_url`` is ``http://host:port``; the stream endpoint is ``/v1/stream``.
    """

    def __init__(
        self,
        base_url: str,
        *,
        connect_timeout: float = 5.0,
        deadlines: StreamDeadlines | None = None,
    ) -> None:
        if not base_url.startswith(("http://", "https://")):
            raise ValueError(
                f"inference server URL must start with http:// or https://: {base_url!r}"
            )
        self._base_url = base_url.rstrip("/")
        self._connect_timeout = connect_timeout
        self.deadlines = deadlines or StreamDeadlines()
        self._session: aiohttp.ClientSession | None = None

    @property
    def base_url(self) -> str:
        return self._base_url

    def _http(self) -> aiohttp.ClientSession:
        if self._session is None or self._session.closed:
            # trust_env=False: never route loopback inference traffic through a proxy. The
            # shared token (if the operator set one) goes with every request.
            self._session = aiohttp.ClientSession(trust_env=False, headers=auth_headers())
        return self._session

    async def open(
        self, start: dict[str, Any], *, connect_timeout: float | None = None
    ) -> InferenceStream:
        """Connect and send the start frame ``start`` (which carries ``op`` and ``call_id``)."""
        url = self._base_url + "/v1/stream"
        try:
            ws = await asyncio.wait_for(
                self._http().ws_connect(
                    url, max_msg_size=16 * 1024 * 1024, heartbeat=self.deadlines.heartbeat
                ),
                timeout=connect_timeout if connect_timeout is not None else self._connect_timeout,
            )
        except TimeoutError as err:
            raise APITimeoutError(f"inference server at {url} did not accept in time") from err
        except aiohttp.WSServerHandshakeError as err:
            raise APIStatusError(
                f"inference server at {url} refused the stream: HTTP {err.status}",
                status_code=err.status,
            ) from err
        except (aiohttp.ClientError, OSError) as err:
            raise APIConnectionError(f"cannot reach the inference server at {url}: {err}") from err
        op = str(start.get("op", ""))
        stream = InferenceStream(
            ws,
            reply_timeout=self.deadlines.for_op(op),
            expect_now=op == "llm",
            first_reply_timeout=self.deadlines.llm_first if op == "llm" else None,
        )
        try:
            await stream.send_json(start)
        except BaseException:
            await asyncio.shield(stream.aclose())
            raise
        return stream

    async def aclose(self) -> None:
        """Close the HTTP session; open streams are closed with it."""
        if self._session is not None:
            await self._session.close()
            self._session = None


class InferencePlugin:
    """What the STT, LLM and TTS plugins share: a client of one inference server and the call id.

    A mixin listed before the livekit base class (``class InferenceSTT(InferencePlugin,
    stt.STT)``), so its ``model``/``provider`` answer for the plugin. The call id groups a
    call's streams for the server's admission control; a random one when none is given.
    """

    _client: InferenceClient
    _call_id: str

    def _connect(self, url: str, *, call_id: str, connect_timeout: float) -> None:
        self._client = InferenceClient(url, connect_timeout=connect_timeout)
        self._call_id = call_id or utils.shortuuid("call_")

    def set_deadlines(self, deadlines: StreamDeadlines) -> None:
        """Deadlines and heartbeat of the streams this plugin opens from now on."""
        self._client.deadlines = deadlines

    @property
    def model(self) -> str:
        """The model name livekit-agents reports in metrics."""
        return "voicestack-inference"

    @property
    def provider(self) -> str:
        """The provider name livekit-agents reports in metrics."""
        return "voicestack"
