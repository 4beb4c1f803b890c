"""A Piper -> Whisper round-trip set for measuring the Whisper engines: known sentences spoken by
the bundled Piper voice, resampled to 16 kHz, and a word error rate.

Used by the batched-engine tests and ``scripts/whisper_window_wer.py``. No network: the voice is
a local ONNX file and synthesis runs in onnxruntime with a pinned thread count.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from worker.inference.audio import resample
from worker.inference.wer import normalize_words, word_error_rate

__all__ = ["ROUNDTRIP_SENTENCES", "corpus_word_error_rate", "synthesize_16k"]

ROUNDTRIP_SENTENCES: tuple[str, ...] = (
    "Thank you for calling, how can I help you today?",
    "I would like to check the status of my order.",
    "My internet connection has been dropping every evening this week.",
    "Can you transfer me to someone in the billing department please?",
    "Yes.",
    "The package was supposed to arrive on Monday but it never came.",
    "Please cancel my subscription and send me a confirmation email.",
    "I forgot my password and the reset link does not work.",
    "What are your opening hours on the weekend?",
    "Could you repeat that more slowly?",
    "No.",
    "Okay, thanks.",
    "Hi, it's me again.",
    "I need help with my bill.",
    "Where is my refund?",
    "That is not what I asked for.",
    "Can I speak to a manager?",
    "I already tried restarting the router.",
    "Sure, go ahead.",
    "The card was declined twice yesterday.",
    "Please hold on a second.",
    "Is there a cheaper plan available?",
    "I moved to a new address last month.",
    "Goodbye.",
    "My name is John Smith.",
    "It says the service is unavailable.",
    "I'm not sure, let me check.",
    "Why was I charged twice for the same thing?",
    "Alright, that works for me.",
    "Could you send it by text message instead?",
    "Hello, I am calling because I received a letter about a change to my account and I do not "
    "understand what it means or what I should do next.",
    "I have been a customer for many years and I have never had a problem like this before, so "
    "I would really appreciate it if someone could look into it today.",
)
"""Call-center style utterances from half a second to about eight seconds, mostly short (as
caller turns are), without digits (Whisper writes numbers as digits, which would count as
errors against spelled-out references)."""


def corpus_word_error_rate(references: Sequence[str], hypotheses: Sequence[str]) -> float:
    """Corpus WER: total word edits over total reference words (long sentences weigh more than
    one-word answers, unlike a mean of per-sentence rates)."""
    if len(references) != len(hypotheses):
        raise ValueError(f"{len(references)} references but {len(hypotheses)} hypotheses")
    lengths = [len(normalize_words(ref)) for ref in references]
    if sum(lengths) == 0:
        raise ValueError("references contain no words")
    edits = sum(
        word_error_rate(ref, hyp) * n
        for ref, hyp, n in zip(references, hypotheses, lengths, strict=True)
    )
    return edits / sum(lengths)


def synthesize_16k(texts: Sequence[str], voice_onnx: Path, *, threads: int = 2) -> list[np.ndarray]:
    """Speak each text with a Piper voice; float32 16 kHz mono clips in [-1, 1].

    Noise scales are zero so the clips (and hence measured WERs) are reproducible; the server's
    TTS engine keeps Piper's default noise, which is why this does not reuse it.
    """
    import onnxruntime
    from piper import PiperVoice, SynthesisConfig
    from piper.config import PiperConfig

    config_path = voice_onnx.with_name(voice_onnx.name + ".json")
    options = onnxruntime.SessionOptions()
    options.intra_op_num_threads = threads
    options.inter_op_num_threads = 1
    options.add_session_config_entry("session.intra_op.allow_spinning", "0")
    voice = PiperVoice(
        session=onnxruntime.InferenceSession(
            str(voice_onnx), sess_options=options, providers=["CPUExecutionProvider"]
        ),
        config=PiperConfig.from_dict(json.loads(config_path.read_text(encoding="utf-8"))),
    )
    syn = SynthesisConfig(noise_scale=0.0, noise_w_scale=0.0)
    clips = []
    for text in texts:
        chunks = [c.audio_float_array for c in voice.synthesize(text, syn_config=syn)]
        if not chunks:
            raise ValueError(f"Piper produced no audio for {text!r}")
        audio = np.concatenate(chunks)
        clips.append(resample(audio, voice.config.sample_rate, 16_000))
    return clips
