"""Work payloads for the three engines, the executors that run them in the engine threads, and
:class:`EngineSet`, which owns the three runners of one server."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np

from worker.config.inference import InferenceConfig, ResolvedModels
from worker.inference.engines.llm import ChatMessage, LlmEngine, SamplingParams
from worker.inference.engines.stt import SttEngine, pcm16_to_float32
from worker.inference.engines.tts import TtsEngine
from worker.inference.runtime import EngineRunner, RunnerObserver, WorkContext

__all__ = [
    "EngineSet",
    "LlmJob",
    "LlmResult",
    "SttJob",
    "TtsAudio",
    "TtsJob",
    "execute_llm",
    "execute_stt",
    "execute_tts",
]


@dataclass(frozen=True)
class SttJob:
    """Transcribe 16 kHz 16-bit PCM (converted in the engine thread, not on the loop)."""

    pcm: bytes
    language: str | None = None


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


def execute_stt(engine: SttEngine, job: SttJob, ctx: WorkContext) -> str:
    return engine.transcribe(pcm16_to_float32(job.pcm), language=job.language)


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


class EngineSet:
    """The three engine runners of one server; each model loads in its own thread."""

    def __init__(
        self,
        config: InferenceConfig,
        models: ResolvedModels,
        observer: RunnerObserver | None = None,
        on_llm_tokens: Callable[[int], None] | None = None,
    ) -> None:
        device = config.device
        q = config.limits.max_queue
        self.stt_languages: frozenset[str] = frozenset()
        """Languages the loaded Whisper model knows (set by the STT thread before it is ready)."""

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

        self.stt: EngineRunner[SttEngine, SttJob, str] = EngineRunner(
            "stt",
            load_stt,
            execute_stt,
            max_queue=q,
            observer=observer,
        )
        self.llm: EngineRunner[LlmEngine, LlmJob, LlmResult] = EngineRunner(
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
        self.tts: EngineRunner[TtsEngine, TtsJob, TtsAudio] = EngineRunner(
            "tts",
            lambda: TtsEngine(
                models.tts_onnx, models.tts_config, device=device, threads=config.tts.threads
            ),
            execute_tts,
            max_queue=q,
            observer=observer,
        )

    @property
    def runners(self) -> tuple[EngineRunner[Any, Any, Any], ...]:
        return (self.stt, self.llm, self.tts)

    def start(self) -> None:
        for runner in self.runners:
            runner.start()

    @property
    def ready(self) -> bool:
        return all(r.ready for r in self.runners)

    def not_ready_reason(self) -> str | None:
        """None when ready; else which engines are loading or failed and why."""
        reasons = []
        for r in self.runners:
            if r.load_error is not None:
                reasons.append(f"{r.name}: failed to load: {r.load_error}")
            elif not r.ready:
                reasons.append(f"{r.name}: loading")
        return "; ".join(reasons) or None

    async def wait_loaded(self) -> None:
        """Wait for every engine; raise ``EngineLoadError`` for the first that failed."""
        for runner in self.runners:
            await runner.wait_loaded()

    def stop(self) -> None:
        for runner in self.runners:
            runner.stop()
