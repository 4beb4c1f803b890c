"""Typed configuration of the inference server (``config/inference.yaml``).

Loaded once at startup with :func:`load_inference_config`; every model path is resolved and
checked there, so a wrong path is a :class:`~worker.config.loader.ConfigError` naming the key,
never a traceback in an engine thread.

Models come from a named set of ``models/manifest.toml`` (``models.set``, the bundled tiny set by
default), resolved with :func:`~worker.models.manifest.resolve_model_set`; the set's engine
settings (device, Whisper compute type and language, LLM context length) are the defaults of the
corresponding keys, and whatever the file sets explicitly wins. Explicit per-file paths
(``models.stt_dir`` ...) replace the set's file for that role.
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from worker.config.loader import ConfigError, load_model, parse_model
from worker.inference.scheduler.config import SchedulingConfig
from worker.models.manifest import (
    DEFAULT_SET,
    LlmEngine,
    Manifest,
    ManifestError,
    ModelSet,
    SttEngine,
    TtsEngine,
    load_manifest,
    resolve_model_set,
)
from worker.models.paths import ModelFiles, ModelNotFoundError

__all__ = [
    "InferenceConfig",
    "LimitsConfig",
    "LlmEngineConfig",
    "ModelsConfig",
    "ResolvedModels",
    "SchedulingConfig",
    "SttEngineConfig",
    "TtsEngineConfig",
    "apply_set_defaults",
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
    first_chunk_words: int = Field(
        6,
        ge=0,
        le=50,
        description=(
            "a reply's first chunk ends at its first comma or after this many words, so the "
            "caller hears audio before the first clause is complete (0: whole clauses only)"
        ),
    )


class ModelsConfig(_Strict):
    """Which models to load: a named set of the manifest, with optional per-role file overrides.

    Relative paths are resolved against the directory of the configuration file.
    """

    model_config = ConfigDict(extra="forbid", frozen=True, populate_by_name=True)

    set_name: str = Field(
        DEFAULT_SET,
        alias="set",
        min_length=1,
        description="model set of the manifest (scripts/download_models.sh SET fetches it)",
    )
    dir: Path = Field(
        Path("../models"), description="where downloaded sets live (the downloader's --models-dir)"
    )
    manifest: Path | None = Field(
        None, description="model manifest; null: $VOICESTACK_MODEL_MANIFEST or models/manifest.toml"
    )
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
    max_unstarted_connections: int = Field(
        64,
        ge=1,
        le=10_000,
        description=(
            "WebSocket connections that have not sent their start frame yet (each waits up to "
            "10 s); beyond this new connections get HTTP 503"
        ),
    )
    header_timeout_s: float = Field(
        10.0,
        gt=0,
        le=120,
        description=(
            "a connection must finish its request headers within this (slowloris clients that "
            "send a byte now and then are closed)"
        ),
    )
    max_connections: int = Field(
        1024,
        ge=16,
        le=100_000,
        description=(
            "open TCP connections at once (an agent call holds three or four); beyond this a "
            "new connection is closed at once, before it can hold a file descriptor"
        ),
    )
    max_streams_per_call: int = Field(
        6,
        ge=3,
        le=64,
        description=(
            "open streams one call id may hold (an agent call uses STT, one or two LLM and TTS "
            "streams): admission counts calls, so streams beyond this are refused"
        ),
    )
    max_queue: int = Field(64, ge=1, description="waiting work items per engine")
    stuck_step_s: float = Field(
        10.0, gt=0, description="a step running longer makes /readyz 503 (a hung engine)"
    )
    failed_steps_unready: int = Field(
        3, ge=1, description="this many failed steps in a row make /readyz 503"
    )


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
    set_name: str = DEFAULT_SET
    """The manifest set the files (those not overridden by path) come from."""

    @property
    def tts_config(self) -> Path:
        return self.tts_onnx.with_name(self.tts_onnx.name + ".json")


def _check(key: str, required: list[Path], source: str) -> None:
    for item in required:
        if not item.is_file():
            raise ConfigError(f"{source}: models.{key}: model file not found: {item}")


def _load_set(models: ModelsConfig, base_dir: Path, source: str) -> ModelSet:
    manifest_path = None if models.manifest is None else _absolute(models.manifest, base_dir)
    try:
        manifest: Manifest = load_manifest(manifest_path)
        return manifest.model_set(models.set_name)
    except ManifestError as err:
        raise ConfigError(f"{source}: models.set: {err}") from None


def _absolute(p: Path, base_dir: Path) -> Path:
    return p if p.is_absolute() else (base_dir / p).resolve()


def resolve_models(
    models: ModelsConfig, base_dir: Path, source: str = "<config>"
) -> ResolvedModels:
    """Turn the configured model set into checked paths; per-role paths replace set files.

    Raises :class:`ConfigError` for an unknown set, a missing or unverified file of the set (the
    message names set, file and the ``scripts/download_models.sh`` command that fixes it) and a
    missing overridden file (naming its key).
    """
    manifest = None if models.manifest is None else _absolute(models.manifest, base_dir)
    model_set = _load_set(models, base_dir, source)
    stt_dir = None if models.stt_dir is None else _absolute(models.stt_dir, base_dir)
    llm = None if models.llm_gguf is None else _absolute(models.llm_gguf, base_dir)
    tts = None if models.tts_onnx is None else _absolute(models.tts_onnx, base_dir)
    if stt_dir is None or llm is None or tts is None:
        models_dir = _absolute(models.dir, base_dir)
        try:
            files: ModelFiles = resolve_model_set(models.set_name, models_dir, manifest)
        except (ModelNotFoundError, ManifestError) as err:
            raise ConfigError(f"{source}: models.set {models.set_name!r}: {err}") from None
        stt_dir = stt_dir or files.stt_dir
        llm = llm or files.llm_gguf
        tts = tts or files.tts_onnx
    # tokenizer.json must be present or faster-whisper tries the hub.
    stt_files = [stt_dir / n for n in ("model.bin", "config.json", "tokenizer.json")]
    _check("stt_dir", stt_files, source)
    _check("llm_gguf", [llm], source)
    _check("tts_onnx", [tts, tts.with_name(tts.name + ".json")], source)
    if models.tts_onnx is None:
        _check_voice_rate(model_set, tts, source)
    return ResolvedModels(stt_dir=stt_dir, llm_gguf=llm, tts_onnx=tts, set_name=model_set.name)


def _check_voice_rate(model_set: ModelSet, tts: Path, source: str) -> None:
    """The manifest's sample rate is what the agents announce; the voice must really have it."""
    engine = model_set.tts.engine
    if not isinstance(engine, TtsEngine):
        return
    voice_json = tts.with_name(tts.name + ".json")
    try:
        rate = json.loads(voice_json.read_text(encoding="utf-8"))["audio"]["sample_rate"]
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise ConfigError(f"{source}: models: cannot read the voice's sample rate: {err}") from None
    if rate != engine.sample_rate:
        raise ConfigError(
            f"{source}: models.set {model_set.name!r}: voice {tts} is {rate} Hz but the manifest "
            f"says {engine.sample_rate} Hz ({model_set.tts.key})"
        )


def apply_set_defaults(cfg: InferenceConfig, model_set: ModelSet) -> InferenceConfig:
    """``cfg`` with the set's engine settings wherever the configuration left the key unset.

    A role whose file is overridden by path keeps the configuration's own defaults: the set's
    settings describe the set's model, not the replacement. Raises ``ValueError`` when a
    manifest value is outside the configuration's bounds.
    """
    update: dict[str, object] = {}
    if "device" not in cfg.model_fields_set:
        update["device"] = model_set.device
    stt = model_set.stt.engine
    if isinstance(stt, SttEngine) and cfg.models.stt_dir is None:
        wanted = {"compute_type": stt.compute_type, "language": stt.language}
        unset = {k: v for k, v in wanted.items() if k not in cfg.stt.model_fields_set}
        update["stt"] = SttEngineConfig.model_validate({**cfg.stt.model_dump(), **unset})
    llm = model_set.llm.engine
    if isinstance(llm, LlmEngine) and cfg.models.llm_gguf is None:
        if "n_ctx" not in cfg.llm.model_fields_set:
            fields = {**cfg.llm.model_dump(), "n_ctx": llm.context_length}
            update["llm"] = LlmEngineConfig.model_validate(fields)
    return cfg.model_copy(update=update)


def load_inference_config(
    path: str | Path | None = None,
) -> tuple[InferenceConfig, ResolvedModels]:
    """Load and validate the configuration (defaults when ``path`` is None) and its models.

    The returned configuration carries the model set's engine settings as defaults (see the
    module docstring).
    """
    if path is None:
        cfg = parse_model({}, InferenceConfig, "<defaults>")
        base_dir, source = Path.cwd(), "<defaults>"
    else:
        path = Path(path)
        cfg = load_model(path, InferenceConfig)
        base_dir, source = path.resolve().parent, str(path)
    models = resolve_models(cfg.models, base_dir, source)
    model_set = _load_set(cfg.models, base_dir, source)
    try:
        cfg = apply_set_defaults(cfg, model_set)
    except ValueError as err:
        raise ConfigError(
            f"{source}: engine settings of model set {model_set.name!r}: {err}"
        ) from None
    return cfg, models
