"""The three engines with the real bundled models (Whisper tiny.en, SmolLM2-135M, Piper joe)."""

from __future__ import annotations

import numpy as np
import pytest

from worker.inference.audio import resample
from worker.inference.engines.llm import ChatMessage, LlmEngine, PromptTooLong, SamplingParams
from worker.inference.engines.stt import SttEngine
from worker.inference.engines.tts import TtsEngine
from worker.inference.wer import normalize_words, word_error_rate

pytestmark = pytest.mark.integration

SENTENCES = [
    "Thank you for calling, how can I help you today?",
    "I would like to check the status of my order.",
    "Your package will arrive on Monday morning.",
    "Please hold while I transfer you to billing.",
    "Is there anything else I can do for you?",
]

STORY = [
    ChatMessage("system", "You are a storyteller."),
    ChatMessage("user", "Tell me a long story about a dragon who lives in a castle."),
]


def to_16k(samples: np.ndarray, rate: int) -> np.ndarray:
    return resample(samples.astype(np.float32) / 32768.0, rate, 16_000)


def test_piper_to_whisper_round_trip_word_error_rate(
    tts_engine: TtsEngine, stt_engine: SttEngine
) -> None:
    errors = 0.0
    words = 0
    transcripts = []
    for sentence in SENTENCES:
        audio = tts_engine.synthesize(sentence)
        assert audio.dtype == np.int16 and audio.size > tts_engine.sample_rate // 2
        text = stt_engine.transcribe(to_16k(audio, tts_engine.sample_rate))
        transcripts.append(text)
        n = len(normalize_words(sentence))
        errors += word_error_rate(sentence, text) * n
        words += n
    wer = errors / words
    assert wer <= 0.15, f"WER {wer:.2%}: {transcripts}"


def test_stt_of_no_audio_is_empty(stt_engine: SttEngine) -> None:
    assert stt_engine.transcribe(np.zeros(0, dtype=np.float32)) == ""


def test_tts_speed_changes_duration(tts_engine: TtsEngine) -> None:
    text = "Please hold while I transfer you to the billing department."
    normal = tts_engine.synthesize(text).size
    # Piper's duration noise varies lengths a little run to run; pauses do not scale fully.
    assert 0.4 < tts_engine.synthesize(text, speed=2.0).size / normal < 0.8
    assert 1.4 < tts_engine.synthesize(text, speed=0.5).size / normal < 2.4
    with pytest.raises(ValueError):
        tts_engine.synthesize("x", speed=0)


def test_llm_streams_text_and_stops_at_max_tokens(llm_engine: LlmEngine) -> None:
    gen = llm_engine.generate(STORY, SamplingParams(max_tokens=12, temperature=0.0), lambda: False)
    pieces = list(gen)
    assert "".join(pieces).strip()
    assert len(pieces) >= 2  # streamed, not one blob
    assert gen.finish_reason == "length"
    assert gen.completion_tokens == 12
    assert gen.prompt_tokens > 10


def test_llm_stops_at_a_stop_string(llm_engine: LlmEngine) -> None:
    baseline = "".join(
        llm_engine.generate(STORY, SamplingParams(max_tokens=30, temperature=0.0), lambda: False)
    )
    words = baseline.split()
    assert len(words) >= 6, baseline
    stop = " " + words[4]  # a string the greedy continuation is known to produce
    expected = baseline[: baseline.index(stop)]
    gen = llm_engine.generate(
        STORY, SamplingParams(max_tokens=30, temperature=0.0, stop=(stop,)), lambda: False
    )
    text = "".join(gen)
    assert text == expected
    assert gen.finish_reason == "stop"
    assert gen.completion_tokens < 30


def test_cancelling_stops_token_production(llm_engine: LlmEngine) -> None:
    produced = 0

    def should_stop() -> bool:
        return produced >= 3

    gen = llm_engine.generate(STORY, SamplingParams(max_tokens=200, temperature=0.0), should_stop)
    for _piece in gen:
        produced += 1
    assert gen.finish_reason == "cancelled"
    # The flag is checked before every decode step: at most one token after it flipped.
    assert gen.completion_tokens <= 4


def test_prompt_longer_than_the_context_is_refused(llm_engine: LlmEngine) -> None:
    huge = [ChatMessage("user", "word " * 5000)]
    with pytest.raises(PromptTooLong):
        llm_engine.generate(huge, SamplingParams(max_tokens=4), lambda: False)


def test_seed_reproduces_and_unseeded_requests_do_not_inherit_it(llm_engine: LlmEngine) -> None:
    def sample(seed: int | None) -> str:
        params = SamplingParams(max_tokens=12, temperature=1.0, seed=seed)
        return "".join(llm_engine.generate(STORY, params, lambda: False))

    seeded = sample(7)
    assert sample(7) == seeded
    unseeded = {sample(None) for _ in range(3)}
    assert len(unseeded) > 1  # random, not stuck on the previous request's seed
