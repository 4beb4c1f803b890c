"""Word timings of the batched Whisper engine, with the real bundled tiny.en model on
Piper-spoken sentences: in order, inside the audio, matching the transcript, honest about
leading silence, and free: asking for words never changes a transcript."""

from __future__ import annotations

import re

import numpy as np
import pytest

from worker.inference.engines.stt import SttEngine
from worker.inference.engines.whisper_batch import BatchedWhisper
from worker.inference.engines.whisper_eval import synthesize_16k
from worker.models import bundled_model_files

pytestmark = pytest.mark.integration

SENTENCES = (
    "My card number is four one one one, two two two two.",
    "Can I speak to a manager?",
    "Yes.",
    "I would like to check the balance of my savings account please.",
)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return synthesize_16k(SENTENCES, bundled_model_files().tts_onnx)


@pytest.fixture(scope="module")
def engine() -> BatchedWhisper:
    return BatchedWhisper(bundled_model_files().stt_dir, compute_type="int8", intra_threads=2)


def _letters(text: str) -> str:
    return re.sub(r"[^a-z0-9]", "", text.lower())


def test_words_in_order_inside_the_audio_and_match_the_text(
    engine: BatchedWhisper, clips: list[np.ndarray]
) -> None:
    result = engine.run_batch(clips, words=[True] * len(clips))
    for clip, t in zip(clips, result.transcripts, strict=True):
        duration = clip.size / 16_000
        assert t.text and t.words, t
        starts = [w.start_s for w in t.words]
        assert starts == sorted(starts), t.words
        for prev, word in zip(t.words, t.words[1:], strict=False):
            assert prev.end_s <= word.start_s + 1e-6, t.words  # spans do not overlap
        for word in t.words:
            assert 0.0 <= word.start_s <= word.end_s <= duration, word
            assert word.text == word.text.strip() and word.text
        assert _letters("".join(w.text for w in t.words)) == _letters(t.text)
        assert t.words[-1].end_s > duration / 2  # the words span the speech, not a corner
    assert max(g.align_s for g in result.groups) > 0.0


def test_leading_silence_is_not_a_word(engine: BatchedWhisper, clips: list[np.ndarray]) -> None:
    padded = np.concatenate([np.zeros(32_000, np.float32), clips[0]])
    t = engine.run_batch([padded], words=[True]).transcripts[0]
    assert _letters(t.text).startswith("mycardnumber"), t.text
    assert t.words[0].start_s >= 1.5, t.words
    assert t.words[-1].end_s <= padded.size / 16_000


def test_asking_for_words_changes_no_transcript(
    engine: BatchedWhisper, clips: list[np.ndarray]
) -> None:
    plain = engine.run_batch(clips)
    mixed_flags = [i % 2 == 0 for i in range(len(clips))]
    mixed = engine.run_batch(clips, words=mixed_flags)
    # Same window groups, so the mixed batch really aligns a subset of a shared encoder call.
    assert [g.batch_size for g in mixed.groups] == [g.batch_size for g in plain.groups]
    for flag, a, b in zip(mixed_flags, plain.transcripts, mixed.transcripts, strict=True):
        assert a.text == b.text and a.token_ids == b.token_ids
        assert a.words == () and (bool(b.words) == flag)
    assert all(g.align_s == 0.0 for g in plain.groups)


def test_empty_audio_has_no_words(engine: BatchedWhisper) -> None:
    result = engine.run_batch([np.zeros(0, np.float32)], words=[True])
    assert result.transcripts[0].text == "" and result.transcripts[0].words == ()
    with pytest.raises(ValueError, match="words flags"):
        engine.run_batch([np.zeros(10, np.float32)], words=[True, False])


def test_serial_engine_words(stt_engine: SttEngine, clips: list[np.ndarray]) -> None:
    """The serial baseline (faster-whisper's own word_timestamps) answers the same shape."""
    text, words = stt_engine.transcribe_words(clips[1])
    assert text == stt_engine.transcribe(clips[1])
    assert _letters("".join(w.text for w in words)) == _letters(text)
    assert all(0.0 <= w.start_s <= w.end_s <= clips[1].size / 16_000 + 0.02 for w in words)
    assert stt_engine.transcribe_words(np.zeros(0, np.float32)) == ("", ())
