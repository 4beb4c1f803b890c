"""The inference server's aiohttp application: health, readiness, metrics, capacity, and the
``/v1/stream`` WebSocket (one stream per connection, see docs/inference-protocol.md).

The event loop only moves frames; models live in the engine threads of :class:`EngineSet`.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from typing import Any

from aiohttp import WSCloseCode, web

from worker.config.inference import InferenceConfig, ResolvedModels
from worker.inference.auth import token_middleware
from worker.inference.connection_guard import ConnectionGuard
from worker.inference.faults import FaultInjector
from worker.inference.jobs import EngineSet
from worker.inference.llm_stream import run_llm_stream
from worker.inference.metrics import InferenceMetrics
from worker.inference.protocol import (
    ErrorCode,
    LlmStart,
    StartMessage,
    StreamError,
    SttStart,
    error_frame,
    parse_start,
)
from worker.inference.runtime import EngineNotReady, Overloaded
from worker.inference.scheduler import Engine
from worker.inference.stream_io import ClientGone, StreamContext
from worker.inference.stt_stream import run_stt_stream
from worker.inference.tts_stream import run_tts_stream

__all__ = ["InferenceServer", "build_app"]

log = logging.getLogger(__name__)

OPS = ("stt", "llm", "tts")
_START_TIMEOUT_S = 10.0
_HEARTBEAT_S = 15.0  # detects clients that vanished without closing


class InferenceServer:
    """State shared by all streams of one server: engines, metrics, admission counters."""

    def __init__(
        self,
        config: InferenceConfig,
        models: ResolvedModels,
        engines: EngineSet | None = None,
        *,
        fault_injection: bool = False,
    ) -> None:
        self.config = config
        self.metrics = InferenceMetrics()
        self.engines = engines or EngineSet(
            config,
            models,
            observer=self.metrics,
            on_llm_tokens=self.metrics.llm_tokens.inc,
            on_stats=self.metrics.engine_stats,
            faults=FaultInjector() if fault_injection else None,
        )
        self.active: dict[str, int] = dict.fromkeys(OPS, 0)
        self._sockets: set[web.WebSocketResponse] = set()
        self._unstarted = 0  # connections upgraded, start frame not yet read
        self._ids = itertools.count(1)
        limits = config.limits
        self._max_streams = {
            "stt": limits.max_streams_stt,
            "llm": limits.max_streams_llm,
            "tts": limits.max_streams_tts,
        }

    def connection_guard(self) -> ConnectionGuard:
        """The connection limits of ``config.limits`` for this server's site; refusals are
        counted in ``voicestack_inference_requests_total`` (op ``http``)."""
        limits = self.config.limits
        return ConnectionGuard(
            header_timeout_s=limits.header_timeout_s,
            max_connections=limits.max_connections,
            on_refusal=lambda reason: self.metrics.requests.labels("http", reason).inc(),
        )

    # -- capacity -------------------------------------------------------------------------------
    def capacity(self) -> dict[str, Any]:
        """Load in 0..1 and what it is made of.

        ``load`` is the fullest of: stream slots, engine queues, and the admission controller's
        estimate (admitted calls / ``max_calls`` and, per engine, the work it ran per second
        over its learned capacity; see docs/scheduler.md). ``accepting`` is False when a new
        call would be refused.
        """
        now = time.monotonic()
        admission = self.engines.admission
        ratios = [self.active[op] / self._max_streams[op] for op in OPS]
        ratios += [r.queue_depth / self.config.limits.max_queue for r in self.engines.runners]
        # The engines' work rate decays over load_window_s; with no call admitted no work can
        # arrive any more, so an idle server reports 0 at once instead of a fading average.
        ratios.append(admission.load(now) if admission.active_calls else 0.0)
        load = min(1.0, max(ratios))
        engines: dict[str, Any] = {}
        for r in self.engines.runners:
            entry: dict[str, Any] = {"queue_depth": r.queue_depth, "busy": r.busy}
            st = self.engines.stats.get(Engine(r.name))
            if st is not None:
                entry.update(
                    waiting=st.waiting,
                    active_slots=st.active,
                    slots=st.slots,
                    capacity_units_per_s=round(st.capacity_units_per_s, 3),
                    utilization=round(admission.utilization(st.engine, now), 4),
                    deadline_misses=st.deadline_misses,
                    steps=st.steps,
                )
            engines[r.name] = entry
        self.metrics.load.set(load)
        return {
            "load": round(load, 4),
            "mode": self.engines.mode,
            "active_streams": dict(self.active),
            "active_calls": admission.active_calls,
            "engines": engines,
            "accepting": self.engines.ready and load < 1.0 and admission.accepting(now),
        }

    # -- HTTP handlers --------------------------------------------------------------------------
    async def healthz(self, request: web.Request) -> web.Response:
        return web.Response(text="ok")

    async def readyz(self, request: web.Request) -> web.Response:
        reason = self.engines.not_ready_reason()
        if reason is None:
            return web.json_response({"ready": True})
        return web.json_response({"ready": False, "reason": reason}, status=503)

    async def metrics_handler(self, request: web.Request) -> web.Response:
        return web.Response(
            body=self.metrics.render(), headers={"Content-Type": "text/plain; version=0.0.4"}
        )

    async def capacity_handler(self, request: web.Request) -> web.Response:
        return web.json_response(self.capacity())

    async def faults_handler(self, request: web.Request) -> web.Response:
        """``POST /v1/faults`` ``{"engine", "fault", "count"}`` arms a fault, ``DELETE`` disarms
        all (see :mod:`worker.inference.faults`); 404 unless started with ``--fault-injection``."""
        faults = self.engines.faults
        if faults is None:
            raise web.HTTPNotFound(text="fault injection is off (--fault-injection)")
        if request.method == "DELETE":
            faults.disarm()
            return web.json_response({"armed": {}})
        try:
            body = await request.json()
            engine = str(body["engine"])
            if engine not in OPS:
                raise ValueError(f"unknown engine {engine!r}")
            faults.arm(engine, str(body["fault"]), int(body.get("count", -1)))
        except (ValueError, KeyError, TypeError) as err:
            raise web.HTTPBadRequest(text=f"bad fault request: {err}") from None
        log.warning("fault injection armed: %s", faults.armed())
        return web.json_response({"armed": faults.armed()})

    async def stream_handler(self, request: web.Request) -> web.StreamResponse:
        limits = self.config.limits
        if self._unstarted >= limits.max_unstarted_connections:
            # Connections that never send a start frame cost a socket each for up to
            # _START_TIMEOUT_S: thousands of them would starve real clients. Refuse before the
            # upgrade; streams already running are not affected.
            self.metrics.requests.labels("unknown", "too_many_unstarted").inc()
            message = (
                f"more than {limits.max_unstarted_connections} connections waiting to start"
                " a stream"
            )
            return web.json_response(error_frame(ErrorCode.OVERLOADED, message), status=503)
        # aiohttp itself refuses (close 1009) frames beyond twice our limit, so an oversized
        # frame is never buffered whole; between the limit and that, we answer with our error.
        ws = web.WebSocketResponse(
            max_msg_size=2 * max(limits.max_audio_frame_bytes, limits.max_text_frame_bytes),
            heartbeat=_HEARTBEAT_S,
        )
        self._unstarted += 1  # counted from before the upgrade: a burst cannot overshoot
        try:
            await ws.prepare(request)
        except BaseException:
            self._unstarted -= 1
            raise
        self._sockets.add(ws)
        stream_id = f"s{next(self._ids)}"
        ctx = StreamContext(ws, self.engines, self.config, self.metrics, stream_id)
        op = "unknown"
        outcome = "ok"
        admitted = False
        call_open: str | None = None
        try:
            try:
                start = await self._read_start(ctx)
            finally:
                self._unstarted -= 1
            op = start.op
            self._admit(op)
            admitted = True
            self.metrics.active_streams.labels(op).inc()
            call_open = self._admit_call(start.call_id)
            if isinstance(start, SttStart):
                await run_stt_stream(ctx, start)
            elif isinstance(start, LlmStart):
                await run_llm_stream(ctx, start)
            else:
                await run_tts_stream(ctx, start)
        except StreamError as err:
            outcome = err.code.value
            log.info("stream %s (%s): %s: %s", stream_id, op, err.code.value, err.message)
            await _try_send_error(ctx, err.code, err.message)
        except ClientGone as err:
            outcome = "cancelled"
            log.debug("stream %s (%s): %s", stream_id, op, err)
        except (EngineNotReady, Overloaded) as err:
            code = ErrorCode.NOT_READY if isinstance(err, EngineNotReady) else ErrorCode.OVERLOADED
            outcome = code.value
            await _try_send_error(ctx, code, str(err))
        except Exception as err:
            outcome = ErrorCode.INTERNAL.value
            log.exception("stream %s (%s) failed", stream_id, op)
            await _try_send_error(ctx, ErrorCode.INTERNAL, f"{type(err).__name__}: {err}")
        finally:
            if call_open is not None:
                self.engines.close_call_stream(call_open)
                self.metrics.active_calls.set(self.engines.admission.active_calls)
            if admitted:
                self.active[op] -= 1
                self.metrics.active_streams.labels(op).dec()
            self.metrics.requests.labels(op, outcome).inc()
            self._sockets.discard(ws)
            await ws.close()
        return ws

    async def _read_start(self, ctx: StreamContext) -> StartMessage:
        try:
            frame = await asyncio.wait_for(ctx.receive(), _START_TIMEOUT_S)
        except TimeoutError:
            raise StreamError(
                ErrorCode.BAD_REQUEST, f"no start frame within {_START_TIMEOUT_S:g} s"
            ) from None
        if frame is None:
            raise ClientGone("client left before starting a stream")
        if isinstance(frame, bytes):
            raise StreamError(ErrorCode.BAD_REQUEST, "the first frame must be a JSON text frame")
        return parse_start(frame)

    def _admit(self, op: str) -> None:
        reason = self.engines.not_ready_reason()
        if reason is not None:
            raise StreamError(ErrorCode.NOT_READY, f"models not ready: {reason}")
        if self.active[op] >= self._max_streams[op]:
            raise StreamError(
                ErrorCode.OVERLOADED,
                f"{self._max_streams[op]} {op} streams already open; retry elsewhere",
            )
        self.active[op] += 1

    def _admit_call(self, call_id: str) -> str:
        """Admit the stream's call (a call's first stream admits it; its last one releases it);
        beyond the estimated capacity refuse at once with ``overloaded``, never queue."""
        is_new = not self.engines.has_call(call_id)
        decision = self.engines.open_call_stream(call_id)
        if not decision.accepted:
            self.metrics.calls.labels("refused").inc()
            raise StreamError(ErrorCode.OVERLOADED, f"call {call_id} refused: {decision.reason}")
        if is_new:
            self.metrics.calls.labels("admitted").inc()
        self.metrics.active_calls.set(self.engines.admission.active_calls)
        return call_id

    # -- lifecycle ------------------------------------------------------------------------------
    async def on_startup(self, app: web.Application) -> None:
        self.engines.start()

    async def on_shutdown(self, app: web.Application) -> None:
        # Close open streams first (clients see 1001 "going away" and can retry elsewhere);
        # their handlers cancel their work, then the engine threads stop.
        await asyncio.gather(
            *(
                ws.close(code=WSCloseCode.GOING_AWAY, message=b"server shutting down")
                for ws in list(self._sockets)
            ),
            return_exceptions=True,
        )
        await asyncio.to_thread(self.engines.stop)


async def _try_send_error(ctx: StreamContext, code: ErrorCode, message: str) -> None:
    try:
        await ctx.send_json(error_frame(code, message))
    except ClientGone:
        pass  # nobody left to tell


def build_app(server: InferenceServer, token: str | None = None) -> web.Application:
    """The aiohttp application; engines start loading when the app starts. With ``token``,
    ``/v1/*`` needs it (:mod:`worker.inference.auth`)."""
    app = web.Application(middlewares=[token_middleware(token)] if token else [])
    app.router.add_get("/healthz", server.healthz)
    app.router.add_get("/readyz", server.readyz)
    app.router.add_get("/metrics", server.metrics_handler)
    app.router.add_get("/v1/capacity", server.capacity_handler)
    app.router.add_get("/v1/stream", server.stream_handler)
    app.router.add_route("POST", "/v1/faults", server.faults_handler)
    app.router.add_route("DELETE", "/v1/faults", server.faults_handler)
    app.on_startup.append(server.on_startup)
    app.on_shutdown.append(server.on_shutdown)
    return app
