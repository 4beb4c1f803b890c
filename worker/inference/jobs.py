"""Work payloads for the three engines, the executors that run them in the engine threads, and
:class:`EngineSet`, which owns the three runners of one server.

``scheduler.mode`` picks the runners: ``serial`` (the baseline) runs the classic engines
(faster-whisper ``transcribe``, llama-cpp-python ``Llama``, Piper) one work item at a time per
engine in :class:`~worker.inference.runtime.EngineRunner`; ``deadline`` runs the batched engines
(``BatchedWhisper``, ``BatchedLlama``, Piper interleaved) under the deadline scheduler in
:class:`~worker.inference.scheduled.ScheduledRunner`. Streams submit the same way to both.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeAlias

import numpy as np

from worker.config.inference import InferenceConfig, ResolvedModels
from worker.inference.engines.llm import ChatMessage, LlmEngine, SamplingParams
from worker.inference.engines.stt import SttEngine, pcm16_to_float32
from worker.inference.engines.tts import TtsEngine
from worker.inference.faults import FaultInjector
from worker.inference.runtime import EngineRunner, RunnerObserver, WorkContext
from worker.inference.scheduled import ScheduledRunner, StepEngine
from worker.inference.scheduler import (
    AdmissionController,
    CallClock,
    Decision,
    Engine,
    EngineStats,
    Stage,
    make_scheduler,
)
from worker.inference.words import Word

__all__ = [
    "AnyRunner",
    "EngineSet",
    "LlmJob",
    "LlmResult",
    "SttJob",
    "SttResult",
    "SttWords",
    "TtsAudio",
    "TtsJob",
    "execute_llm",
    "execute_stt",
    "execute_tts",
]


@dataclass(frozen=True)
class SttJob:
    """Transcribe 16 kHz 16-bit PCM (converted in the engine thread, not on the loop).

    ``words``: also time each word (the result is then :class:`SttWords`, else the text).
    """

    pcm: bytes
    language: str | None = None
    words: bool = False


@dataclass(frozen=True)
class SttWords:
    """The result of an :class:`SttJob` with ``words``: text and word timings (s from the
    start of the job's audio)."""

    text: str
    words: tuple[Word, ...]


SttResult: TypeAlias = str | SttWords
"""What STT work returns: the text, or :class:`SttWords` for a job that asked for words."""


@dataclass(frozen=True)
class LlmJob:
    messages: Sequence[ChatMessage]
    params: SamplingParams


@dataclass(frozen=True)
class LlmResult:
    finish_reason: str
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True)
class TtsJob:
    text: str
    speed: float = 1.0


def execute_stt(engine: SttEngine, job: SttJob, ctx: WorkContext) -> SttResult:
    audio = pcm16_to_float32(job.pcm)
    if job.words:
        return SttWords(*engine.transcribe_words(audio, language=job.language))
    return engine.transcribe(audio, language=job.language)


class _LlmExecutor:
    """Streams every text piece to the awaiting stream; counts tokens for /metrics."""

    def __init__(self, on_tokens: Callable[[int], None] | None = None) -> None:
        self._on_tokens = on_tokens

    def __call__(self, engine: LlmEngine, job: LlmJob, ctx: WorkContext) -> LlmResult:
        gen = engine.generate(job.messages, job.params, ctx.cancelled)
        counted = 0
        for piece in gen:
            ctx.emit(piece)
            if self._on_tokens is not None:
                self._on_tokens(gen.completion_tokens - counted)
                counted = gen.completion_tokens
        if self._on_tokens is not None and gen.completion_tokens > counted:
            self._on_tokens(gen.completion_tokens - counted)
        return LlmResult(
            finish_reason=gen.finish_reason or "stop",
            prompt_tokens=gen.prompt_tokens,
            completion_tokens=gen.completion_tokens,
        )


execute_llm = _LlmExecutor()


@dataclass(frozen=True)
class TtsAudio:
    samples: np.ndarray  # int16 mono
    sample_rate: int


def execute_tts(engine: TtsEngine, job: TtsJob, ctx: WorkContext) -> TtsAudio:
    return TtsAudio(engine.synthesize(job.text, speed=job.speed), engine.sample_rate)


AnyRunner: TypeAlias = EngineRunner[Any, Any, Any] | ScheduledRunner[Any, Any]


class EngineSet:
    """The three engine runners of one server; each model loads in its own thread.

    Also the event-loop side of scheduling: the :class:`CallClock` (turn-relative deadlines),
    the :class:`AdmissionController` (calls, load, refusals) and the latest ``EngineStats`` per
    engine, which the owner threads post here with ``call_soon_threadsafe``.
    """

    def __init__(
        self,
        config: InferenceConfig,
        models: ResolvedModels,
        observer: RunnerObserver | None = None,
        on_llm_tokens: Callable[[int], None] | None = None,
        on_stats: Callable[[EngineStats], None] | None = None,
        faults: FaultInjector | None = None,
    ) -> None:
        self.config = config
        self.faults = faults
        """Armed by ``POST /v1/faults`` when the server runs with ``--fault-injection``."""
        self.mode = config.scheduler.mode
        sched_cfg = config.scheduler
        self.clock = CallClock(sched_cfg.deadlines, sched_cfg.admission.max_calls)
        self.admission = AdmissionController(sched_cfg.admission)
        self.stats: dict[Engine, EngineStats] = {}
        self._on_stats = on_stats
        self._observer = observer
        self._streams_per_call: dict[str, int] = {}
        self._loop: asyncio.AbstractEventLoop | None = None
        self.stt_languages: frozenset[str] = frozenset()
        """Languages the loaded Whisper model knows (set by the STT thread before it is ready)."""
        if self.mode == "serial":
            self._build_serial(config, models, observer, on_llm_tokens)
        else:
            self._build_scheduled(config, models, on_llm_tokens)

    def _build_serial(
        self,
        config: InferenceConfig,
        models: ResolvedModels,
        observer: RunnerObserver | None,
        on_llm_tokens: Callable[[int], None] | None,
    ) -> None:
        device = config.device
        q = config.limits.max_queue

        def load_stt() -> SttEngine:
            engine = SttEngine(
                models.stt_dir,
                device=device,
                compute_type=config.stt.compute_type,
                threads=config.stt.threads,
                language=config.stt.language,
            )
            self.stt_languages = engine.supported_languages
            return engine

        self.stt: AnyRunner = EngineRunner(
            "stt", load_stt, execute_stt, max_queue=q, observer=observer
        )
        self.llm: AnyRunner = EngineRunner(
            "llm",
            lambda: LlmEngine(
                models.llm_gguf,
                device=device,
                threads=config.llm.threads,
                n_ctx=config.llm.n_ctx,
                n_batch=config.llm.n_batch,
            ),
            _LlmExecutor(on_llm_tokens),
            max_queue=q,
            observer=observer,
        )
        self.tts: AnyRunner = EngineRunner(
            "tts",
            lambda: TtsEngine(
                models.tts_onnx, models.tts_config, device=device, threads=config.tts.threads
            ),
            execute_tts,
            max_queue=q,
            observer=observer,
        )

    def _build_scheduled(
        self,
        config: InferenceConfig,
        models: ResolvedModels,
        on_llm_tokens: Callable[[int], None] | None,
    ) -> None:
        from worker.inference.engines.llama_batch import BatchedLlama
        from worker.inference.engines.llama_batch_model import LlamaModel
        from worker.inference.engines.whisper_batch import BatchedWhisper
        from worker.inference.step_engines import LlamaStep, PiperStep, WhisperStep

        device = config.device
        sc = config.scheduler
        q = config.limits.max_queue

        def load_stt() -> StepEngine:
            engine = BatchedWhisper(
                models.stt_dir,
                device=device,
                compute_type=config.stt.compute_type,
                intra_threads=config.stt.threads,
                language=config.stt.language,
            )
            # BatchedWhisper fixes its language at load: streams may ask for that one only.
            self.stt_languages = frozenset({config.stt.language})
            return WhisperStep(engine)

        def load_llm() -> StepEngine:
            model = LlamaModel(models.llm_gguf, device=device)
            engine = BatchedLlama(
                model,
                n_ctx=config.llm.n_ctx * sc.llm.slots,  # n_ctx cells per sequence (split KV)
                n_batch=max(config.llm.n_batch, sc.llm.slots),
                n_seq_max=sc.llm.slots,
                n_threads=config.llm.threads,
                share_prefixes=True,  # calls share the agent's system prompt
            )
            return LlamaStep(engine, sc.deadlines, config.llm.n_batch, on_llm_tokens)

        def load_tts() -> StepEngine:
            return PiperStep(
                TtsEngine(
                    models.tts_onnx, models.tts_config, device=device, threads=config.tts.threads
                )
            )

        def runner(name: str, engine: Engine, load: Callable[[], StepEngine]) -> AnyRunner:
            return ScheduledRunner(
                name,
                load,
                make_scheduler(engine, sc.for_engine(engine), sc.mode),
                self.clock,
                max_inbox=q,
                on_stats=self._post_stats,
                on_work_done=self._work_done,
                faults=self.faults,
                stuck_step_s=config.limits.stuck_step_s,
                failed_steps_unready=config.limits.failed_steps_unready,
            )

        self.stt = runner("stt", Engine.STT, load_stt)
        self.llm = runner("llm", Engine.LLM, load_llm)
        self.tts = runner("tts", Engine.TTS, load_tts)

    # -- scheduling state (event loop) ----------------------------------------------------------
    def _work_done(self, engine: str, state: Any, wait_s: float, run_s: float) -> None:
        if self._observer is not None:
            self._observer.work_done(engine, state, wait_s, run_s)

    def _post_stats(self, stats: EngineStats) -> None:
        """Owner thread -> event loop (never touches loop state directly)."""
        loop = self._loop
        if loop is None:
            return
        try:
            loop.call_soon_threadsafe(self._apply_stats, stats)
        except RuntimeError:  # the loop is closed: shutting down
            pass

    def _apply_stats(self, stats: EngineStats) -> None:
        self.stats[stats.engine] = stats
        self.admission.update(stats)
        if self._on_stats is not None:
            self._on_stats(stats)

    def open_call_stream(self, call_id: str) -> Decision:
        """A stream of ``call_id`` starts: admit the call if it is new (refusal: the decision
        says why). Every accepted open must be paired with :meth:`close_call_stream`."""
        if call_id in self._streams_per_call:
            load = self.admission.load(time.monotonic())
            limit = self.config.limits.max_streams_per_call
            if self._streams_per_call[call_id] >= limit:
                # A call's own streams are a handful (STT, an LLM reply and a prefill, TTS):
                # more means a client is piling work onto an admitted call id, around max_calls.
                return Decision(
                    False, f"call {call_id!r} already has {limit} open streams", load, load
                )
            self._streams_per_call[call_id] += 1
            return Decision(True, "call already admitted", load, load)
        decision = self.admission.admit_call(call_id, time.monotonic())
        if decision.accepted:
            self._streams_per_call[call_id] = 1
        return decision

    def has_call(self, call_id: str) -> bool:
        """True while ``call_id`` has an open stream (it is admitted)."""
        return call_id in self._streams_per_call

    def close_call_stream(self, call_id: str) -> None:
        """A stream of ``call_id`` ended; the call is released with its last stream."""
        left = self._streams_per_call.get(call_id, 0) - 1
        if left > 0:
            self._streams_per_call[call_id] = left
            return
        self._streams_per_call.pop(call_id, None)
        self.admission.release_call(call_id)
        self.clock.forget(call_id)

    def deadline(self, call_id: str, stage: Stage) -> float:
        """Absolute deadline (monotonic) of new ``stage`` work of ``call_id`` now."""
        return self.clock.deadline(call_id, stage, time.monotonic())

    # -- lifecycle --------------------------------------------------------------------------------
    @property
    def runners(self) -> tuple[AnyRunner, ...]:
        return (self.stt, self.llm, self.tts)

    def start(self) -> None:
        """Start the engine threads; call from the event loop that serves the streams."""
        self._loop = asyncio.get_running_loop()
        for runner in self.runners:
            runner.start()

    @property
    def ready(self) -> bool:
        return all(r.ready for r in self.runners)

    def not_ready_reason(self) -> str | None:
        """None when ready; else which engines cannot serve and why (loading, failed to load,
        owner thread dead, stuck in a step, failing every step)."""
        reasons = [f"{r.name}: {p}" for r in self.runners if (p := r.problem()) is not None]
        return "; ".join(reasons) or None

    async def wait_loaded(self) -> None:
        """Wait for every engine; raise ``EngineLoadError`` for the first that failed."""
        for runner in self.runners:
            await runner.wait_loaded()

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()
