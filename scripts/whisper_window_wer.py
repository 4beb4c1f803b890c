"""Short encoder windows vs the padded 30 s path of the batched Whisper engine.

Speaks the round-trip set with the bundled Piper voice, transcribes it with each window mode
(``short`` = short window + cached silence tail, ``short_raw`` = short window alone,
``padded30`` = classic), and prints the corpus word error rate of each, then the mean
features+encode+decode time per item at batch 1 and batch 8 on this machine.

    HF_HUB_OFFLINE=1 .venv/bin/python scripts/whisper_window_wer.py [--threads 2] [--reps 5] [-v]
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import time
from collections.abc import Sequence

import numpy as np

os.environ.setdefault("HF_HUB_OFFLINE", "1")

from worker.inference.engines.whisper_batch import BatchedWhisper
from worker.inference.engines.whisper_eval import (
    ROUNDTRIP_SENTENCES,
    corpus_word_error_rate,
    synthesize_16k,
)
from worker.inference.engines.whisper_features import WindowMode
from worker.inference.wer import word_error_rate
from worker.models import bundled_model_files

MODES: tuple[WindowMode, ...] = ("short", "short_raw", "padded30")
BATCH = 8


def _per_item_times(
    engine: BatchedWhisper, clips: Sequence[np.ndarray], batch: int
) -> tuple[float, float, float]:
    """(total, encode, decode) seconds per item, running ``clips`` in batches of ``batch``."""
    encode = decode = 0.0
    start = time.perf_counter()
    for i in range(0, len(clips), batch):
        result = engine.run_batch(clips[i : i + batch])
        encode += sum(g.encode_s for g in result.groups)
        decode += sum(g.decode_s for g in result.groups)
    n = len(clips)
    return (time.perf_counter() - start) / n, encode / n, decode / n


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--threads", type=int, default=2, help="CTranslate2 intra_threads")
    parser.add_argument("--reps", type=int, default=5, help="timing repetitions (minimum)")
    parser.add_argument("--compute-type", default="int8")
    parser.add_argument("-v", "--verbose", action="store_true", help="print every transcript")
    args = parser.parse_args(argv)

    files = bundled_model_files()
    t0 = time.perf_counter()
    clips = synthesize_16k(ROUNDTRIP_SENTENCES, files.tts_onnx, threads=args.threads)
    lengths = [c.size / 16_000 for c in clips]
    print(
        f"round-trip set: {len(clips)} utterances, {min(lengths):.1f}-{max(lengths):.1f} s "
        f"(mean {statistics.mean(lengths):.1f} s), synthesized in {time.perf_counter() - t0:.1f} s"
    )
    engines = {
        mode: BatchedWhisper(
            files.stt_dir,
            compute_type=args.compute_type,
            intra_threads=args.threads,
            window_mode=mode,
        )
        for mode in MODES
    }

    print(f"\nWER (tiny.en, {args.compute_type}, greedy, all utterances in one batch call)")
    for mode, engine in engines.items():
        texts = engine.transcribe_batch(clips)
        wer = corpus_word_error_rate(ROUNDTRIP_SENTENCES, texts)
        bad = sum(
            word_error_rate(r, h) > 0 for r, h in zip(ROUNDTRIP_SENTENCES, texts, strict=True)
        )
        print(f"  {mode:<9} WER {wer:6.1%}  ({bad} of {len(texts)} utterances with errors)")
        if args.verbose:
            for ref, hyp in zip(ROUNDTRIP_SENTENCES, texts, strict=True):
                if word_error_rate(ref, hyp) > 0:
                    print(f"      ref: {ref}\n      hyp: {hyp}")

    # Timing on the utterances that share the most common short window, so that a batch of 8
    # really is one encoder call in every mode.
    short = engines["short"]
    windows = [short.window_s_for(c.size) for c in clips]
    common = max(set(windows), key=windows.count)
    timed = [c for c, w in zip(clips, windows, strict=True) if w == common][: 2 * BATCH]
    # Modes and batch sizes are interleaved within each repetition and the minimum is kept:
    # on a shared machine the other load only ever adds time, so the minimum is the estimate
    # least distorted by it.
    runs: dict[tuple[WindowMode, int], list[tuple[float, float, float]]] = {}
    load_at_start = os.getloadavg()[0]
    for _ in range(args.reps):
        for mode, engine in engines.items():
            for batch in (1, BATCH):
                runs.setdefault((mode, batch), []).append(_per_item_times(engine, timed, batch))
    print(
        f"\nmean time per item, s (features+encode+decode; min of {args.reps} interleaved runs; "
        f"{len(timed)} utterances whose short window is {common:.0f} s; "
        f"{args.threads} threads; 1-min load average at start {load_at_start:.1f})"
    )
    print(f"  {'mode':<9} {'batch':>5} {'total':>8} {'encode':>8} {'decode':>8}")
    for (mode, batch), samples in runs.items():
        total, enc, dec = (min(column) for column in zip(*samples, strict=True))
        print(f"  {mode:<9} {batch:>5} {total:8.4f} {enc:8.4f} {dec:8.4f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
