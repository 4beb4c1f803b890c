"""Typed configuration of the inference server (``config/inference.yaml``).

Loaded once at startup with :func:`load_inference_config`; every model path is resolved and
checked there, so a wrong path is a :class:`~worker.config.loader.ConfigError` naming the key,
never a traceback in an engine thread.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.config.loader import ConfigError, load_model, parse_model
from worker.inference.scheduler.config import SchedulingConfig
from worker.models.paths import ModelFiles, ModelNotFoundError, bundled_model_files

__all__ = [
    "InferenceConfig",
    "LimitsConfig",
    "LlmEngineConfig",
    "ModelsConfig",
    "ResolvedModels",
    "SchedulingConfig",
    "SttEngineConfig",
    "TtsEngineConfig",
    "load_inference_config",
    "resolve_models",
]

Device = Literal["cpu", "cuda"]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SttEngineConfig(_Strict):
    """faster-whisper (CTranslate2) settings."""

    compute_type: Literal[
        "default",
        "int8",
        "int8_float32",
        "int8_float16",
        "int8_bfloat16",
        "float16",
        "bfloat16",
        "float32",
    ] = "int8"
    threads: int = Field(1, ge=1, le=256, description="CTranslate2 intra_threads (cpu_threads)")
    language: str = Field("en", min_length=2, max_length=8)
    interim_interval_ms: int = Field(
        300,
        ge=50,
        le=10_000,
        description="at most one interim transcription per stream per interval",
    )


class LlmEngineConfig(_Strict):
    """llama.cpp settings; the quantization is the GGUF's own."""

    threads: int = Field(1, ge=1, le=256, description="llama.cpp n_threads and n_threads_batch")
    n_ctx: int = Field(2048, ge=256, le=131_072)
    n_batch: int = Field(256, ge=8, le=8192)
    max_tokens: int = Field(
        512, ge=1, le=8192, description="upper bound for a request's max_tokens"
    )


class TtsEngineConfig(_Strict):
    """Piper (onnxruntime) settings."""

    threads: int = Field(1, ge=1, le=256, description="onnxruntime intra_op_num_threads")


class ModelsConfig(_Strict):
    """Model files; ``null`` means the bundled default. Relative paths are resolved against the
    directory of the configuration file."""

    stt_dir: Path | None = None
    llm_gguf: Path | None = None
    tts_onnx: Path | None = None


class LimitsConfig(_Strict):
    """Admission and payload limits: everything beyond them is refused with a clear error."""

    max_audio_frame_bytes: int = Field(
        32_000, ge=320, description="one binary frame (1 s at 16 kHz)"
    )
    max_text_frame_bytes: int = Field(65_536, ge=1024)
    max_utterance_s: float = Field(30.0, gt=0, le=600)
    max_tts_pending_chars: int = Field(4000, ge=64, description="text pushed but not yet spoken")
    max_streams_stt: int = Field(16, ge=1)
    max_streams_llm: int = Field(16, ge=1)
    max_streams_tts: int = Field(16, ge=1)
    max_queue: int = Field(64, ge=1, description="waiting work items per engine")


class InferenceConfig(_Strict):
    """Everything ``voicestack inference-server`` needs."""

    host: str = "127.0.0.1"
    port: int = Field(8765, ge=0, le=65535, description="0 picks a free port")
    device: Device = "cpu"
    stt: SttEngineConfig = SttEngineConfig()
    llm: LlmEngineConfig = LlmEngineConfig()
    tts: TtsEngineConfig = TtsEngineConfig()
    models: ModelsConfig = ModelsConfig()
    limits: LimitsConfig = LimitsConfig()
    scheduler: SchedulingConfig = Field(default_factory=SchedulingConfig)
    """``mode: deadline`` (scheduler + batched engines) or ``serial`` (the measured baseline:
    one request at a time per engine, FIFO, the classic engines); see docs/scheduler.md."""


@dataclass(frozen=True)
class ResolvedModels:
    """Checked, absolute model paths the engines load."""

    stt_dir: Path
    llm_gguf: Path
    tts_onnx: Path

    @property
    def tts_config(self) -> Path:
        return self.tts_onnx.with_name(self.tts_onnx.name + ".json")


def _check(key: str, required: list[Path], source: str) -> None:
    for item in required:
        if not item.is_file():
            raise ConfigError(f"{source}: models.{key}: model file not found: {item}")


def resolve_models(
    models: ModelsConfig, base_dir: Path, source: str = "<config>"
) -> ResolvedModels:
    """Turn the configured model set into checked paths; bundled models fill the gaps.

    Raises :class:`ConfigError` naming the key of the first missing file.
    """

    def absolute(p: Path) -> Path:
        return p if p.is_absolute() else (base_dir / p).resolve()

    bundled: list[ModelFiles] = []

    def pick(configured: Path | None, default: Callable[[ModelFiles], Path]) -> Path:
        if configured is not None:
            return absolute(configured)
        if not bundled:
            try:
                bundled.append(bundled_model_files())
            except ModelNotFoundError as err:
                raise ConfigError(f"{source}: models: bundled model missing: {err}") from None
        return default(bundled[0])

    stt_dir = pick(models.stt_dir, lambda b: b.stt_dir)
    llm = pick(models.llm_gguf, lambda b: b.llm_gguf)
    tts = pick(models.tts_onnx, lambda b: b.tts_onnx)
    # tokenizer.json must be present or faster-whisper tries the hub.
    stt_files = [stt_dir / n for n in ("model.bin", "config.json", "tokenizer.json")]
    _check("stt_dir", stt_files, source)
    _check("llm_gguf", [llm], source)
    _check("tts_onnx", [tts, tts.with_name(tts.name + ".json")], source)
    return ResolvedModels(stt_dir=stt_dir, llm_gguf=llm, tts_onnx=tts)


def load_inference_config(
    path: str | Path | None = None,
) -> tuple[InferenceConfig, ResolvedModels]:
    """Load and validate the configuration (defaults when ``path`` is None) and its models."""
    if path is None:
        cfg = parse_model({}, InferenceConfig, "<defaults>")
        return cfg, resolve_models(cfg.models, Path.cwd(), "<defaults>")
    path = Path(path)
    cfg = load_model(path, InferenceConfig)
    return cfg, resolve_models(cfg.models, path.resolve().parent, str(path))
