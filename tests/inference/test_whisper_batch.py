"""Batched Whisper engine with the real bundled tiny.en model and Piper-spoken sentences.

Equivalence: with greedy decoding, a batch's transcripts equal each item transcribed alone, in
the short-window and the padded 30 s modes. Accuracy: the short-window path keeps the padded
path's word error rate on the round-trip set.
"""

from __future__ import annotations

import threading

import numpy as np
import pytest

from worker.inference.engines.whisper_batch import BatchedWhisper
from worker.inference.engines.whisper_eval import (
    ROUNDTRIP_SENTENCES,
    corpus_word_error_rate,
    synthesize_16k,
)
from worker.models import ModelNotFoundError, bundled_model_files

pytestmark = pytest.mark.integration

# Lengths from 0.6 s to ~3.7 s; "Yes." and "Can I speak to a manager?" are the ones the
# tail-less short window turned into loops, so the WER bound below can catch a regression.
SENTENCES = tuple(
    ROUNDTRIP_SENTENCES[i] for i in (0, 2, 4, 6, 8, ROUNDTRIP_SENTENCES.index("No."), 16)
)


@pytest.fixture(scope="module")
def clips() -> list[np.ndarray]:
    return synthesize_16k(SENTENCES, bundled_model_files().tts_onnx)


@pytest.fixture(scope="module")
def short_engine() -> BatchedWhisper:
    return BatchedWhisper(
        bundled_model_files().stt_dir, compute_type="int8", intra_threads=2, window_mode="short"
    )


@pytest.fixture(scope="module")
def padded_engine() -> BatchedWhisper:
    return BatchedWhisper(
        bundled_model_files().stt_dir, compute_type="int8", intra_threads=2, window_mode="padded30"
    )


@pytest.fixture(scope="module")
def short_batched(short_engine: BatchedWhisper, clips: list[np.ndarray]) -> list[str]:
    return short_engine.transcribe_batch(clips)


@pytest.fixture(scope="module")
def padded_batched(padded_engine: BatchedWhisper, clips: list[np.ndarray]) -> list[str]:
    return padded_engine.transcribe_batch(clips)


def test_short_batch_equals_each_alone(
    short_engine: BatchedWhisper, clips: list[np.ndarray], short_batched: list[str]
) -> None:
    result = short_engine.run_batch(clips)
    # The batch must really share encoder calls, or this test would prove nothing.
    assert max(g.batch_size for g in result.groups) >= 3
    alone = [short_engine.transcribe_batch([clip])[0] for clip in clips]
    assert short_batched == alone
    assert [t.text for t in result.transcripts] == short_batched


def test_padded_batch_equals_each_alone(
    padded_engine: BatchedWhisper, clips: list[np.ndarray], padded_batched: list[str]
) -> None:
    alone = [padded_engine.transcribe_batch([clip])[0] for clip in clips]
    assert padded_batched == alone


def test_batch_order_does_not_change_transcripts(
    short_engine: BatchedWhisper, clips: list[np.ndarray], short_batched: list[str]
) -> None:
    reversed_texts = short_engine.transcribe_batch(clips[::-1])
    assert reversed_texts[::-1] == short_batched


def test_short_window_wer_matches_padded(
    short_batched: list[str], padded_batched: list[str]
) -> None:
    short_wer = corpus_word_error_rate(SENTENCES, short_batched)
    padded_wer = corpus_word_error_rate(SENTENCES, padded_batched)
    assert short_wer <= 0.15, list(zip(SENTENCES, short_batched, strict=True))
    assert short_wer <= padded_wer + 0.03, (short_wer, padded_wer)


def test_short_windows_follow_item_length(
    short_engine: BatchedWhisper, clips: list[np.ndarray]
) -> None:
    result = short_engine.run_batch(clips)
    for clip, transcript in zip(clips, result.transcripts, strict=True):
        assert transcript.window_s == short_engine.window_s_for(clip.size)
        assert clip.size / 16_000 < transcript.window_s < 30.0


def test_long_utterance_is_not_cut_by_the_token_budget(
    short_engine: BatchedWhisper, clips: list[np.ndarray]
) -> None:
    gap = np.zeros(4_800, dtype=np.float32)
    joined = np.concatenate([part for clip in clips for part in (clip, gap)])
    assert 12.0 < joined.size / 16_000 < 30.0
    (transcript,) = short_engine.run_batch([joined]).transcripts
    assert len(transcript.token_ids) < short_engine.max_new_tokens(transcript.window_s)
    assert corpus_word_error_rate([" ".join(SENTENCES)], [transcript.text]) <= 0.15


def test_window_end_tail_shapes(short_engine: BatchedWhisper) -> None:
    import ctranslate2

    def extended(positions: int) -> tuple[int, ...]:
        head = ctranslate2.StorageView.from_array(np.zeros((2, positions, 384), np.float32))
        return tuple(np.asarray(short_engine._append_silence(head)).shape)

    # A short window gets the last 2 s of the 30 s window; one reaching into those 2 s gets
    # only the positions after its end; a full window gets nothing.
    assert extended(250) == (2, 350, 384)
    assert extended(1450) == (2, 1500, 384)
    assert extended(1500) == (2, 1500, 384)


def test_empty_and_silent_audio(short_engine: BatchedWhisper) -> None:
    rng = np.random.default_rng(0)
    silence = np.zeros(16_000, dtype=np.float32)
    hiss = (rng.standard_normal(32_000) * 1e-3).astype(np.float32)
    empty = np.zeros(0, dtype=np.float32)
    texts = short_engine.transcribe_batch([empty, silence, hiss])
    assert texts[0] == ""
    # Whisper may say "you" on silence; it must not invent a sentence.
    assert all(len(text.split()) <= 2 for text in texts), texts


def test_empty_batch(short_engine: BatchedWhisper) -> None:
    assert short_engine.transcribe_batch([]) == []


def test_longer_than_30s_is_refused(short_engine: BatchedWhisper) -> None:
    with pytest.raises(ValueError, match="30 s"):
        short_engine.transcribe_batch(
            [np.zeros(16_000, np.float32), np.zeros(30 * 16_000 + 1, np.float32)]
        )


def test_int16_audio_is_refused(short_engine: BatchedWhisper) -> None:
    with pytest.raises(TypeError, match="int16"):
        short_engine.transcribe_batch([np.zeros(1600, dtype=np.int16)])


def test_owner_thread_is_enforced(short_engine: BatchedWhisper) -> None:
    short_engine.transcribe_batch([])  # binds the owner to this thread, if not already
    errors: list[BaseException] = []

    def other() -> None:
        try:
            short_engine.transcribe_batch([])
        except RuntimeError as exc:
            errors.append(exc)

    thread = threading.Thread(target=other)
    thread.start()
    thread.join()
    assert len(errors) == 1 and "another thread" in str(errors[0])


async def test_refuses_to_run_on_the_event_loop() -> None:
    # A fresh engine so the owner check cannot be what refuses it.
    engine = BatchedWhisper(bundled_model_files().stt_dir, window_mode="short_raw")
    with pytest.raises(RuntimeError, match="event loop"):
        engine.transcribe_batch([])


def test_missing_model_dir_is_a_clear_error(tmp_path: object) -> None:
    with pytest.raises(ModelNotFoundError, match=r"model\.bin"):
        BatchedWhisper(f"{tmp_path}/no-such-model")


def test_unpinned_threads_are_refused() -> None:
    with pytest.raises(ValueError, match="intra_threads"):
        BatchedWhisper(bundled_model_files().stt_dir, intra_threads=0)
