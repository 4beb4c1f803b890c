"""Fixtures with the real bundled models: each model loads once per session.

``inference_server`` runs the real aiohttp server, with its engine threads, on its own event
loop in a background thread, bound to 127.0.0.1 on a free port; tests talk to it as clients
and read its limits from ``inference_server.server.config``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from worker.config.inference import (
    InferenceConfig,
    LimitsConfig,
    LlmEngineConfig,
    ResolvedModels,
    resolve_models,
)
from worker.inference.background import RunningServer, serve_in_thread
from worker.inference.engines.llm import LlmEngine
from worker.inference.engines.stt import SttEngine
from worker.inference.engines.tts import TtsEngine

os.environ.setdefault("HF_HUB_OFFLINE", "1")

# Limits small enough to reach in a test; each value is what the protocol tests rely on.
TEST_LIMITS = LimitsConfig(
    max_audio_frame_bytes=32_000,
    max_text_frame_bytes=16_384,
    max_utterance_s=8.0,
    max_tts_pending_chars=2000,
    max_streams_stt=4,
    max_streams_llm=3,
    max_streams_tts=4,
    max_queue=16,
    header_timeout_s=2.0,  # the slowloris test waits for it
)


@pytest.fixture(scope="session")
def models() -> ResolvedModels:
    return resolve_models(InferenceConfig().models, Path.cwd(), "<tests>")


@pytest.fixture(scope="session")
def stt_engine(models: ResolvedModels) -> SttEngine:
    return SttEngine(models.stt_dir, device="cpu", compute_type="int8", threads=1, language="en")


@pytest.fixture(scope="session")
def llm_engine(models: ResolvedModels) -> LlmEngine:
    return LlmEngine(models.llm_gguf, device="cpu", threads=1, n_ctx=2048, n_batch=256)


@pytest.fixture(scope="session")
def tts_engine(models: ResolvedModels) -> TtsEngine:
    return TtsEngine(models.tts_onnx, models.tts_config, device="cpu", threads=1)


@pytest.fixture(scope="session")
def inference_server(models: ResolvedModels) -> Iterator[RunningServer]:
    config = InferenceConfig(
        port=0, limits=TEST_LIMITS, llm=LlmEngineConfig(max_tokens=400, n_ctx=2048)
    )
    with serve_in_thread(config, models) as running:
        yield running
