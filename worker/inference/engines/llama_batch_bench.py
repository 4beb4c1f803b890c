"""Throughput of the batched LLM engine: decode tokens/s with 1 vs N concurrent sequences.

Run: ``HF_HUB_OFFLINE=1 python -m worker.inference.engines.llama_batch_bench`` (add ``--help``).
Prints one line per configuration; numbers go to docs/llama-batching.md with the command used.
A measurement script, not a test: timings never go into the test suite.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
from collections.abc import Sequence

from worker.inference.engines.llama_batch import BatchedLlama, SamplingParams
from worker.inference.engines.llama_batch_model import LlamaModel
from worker.models import bundled_model_files

__all__ = ["main", "measure"]

TOPICS = [
    "a lighthouse keeper",
    "a lost umbrella",
    "the first day of spring",
    "a robot learning to cook",
    "a train that never stops",
    "a cat who runs a bakery",
    "a storm at sea",
    "a library at midnight",
    "a mountain village",
    "a broken clock",
    "a city under the ocean",
    "a letter never sent",
    "a garden on the moon",
    "a forgotten song",
    "an old bicycle",
    "the last bus home",
]


def measure(
    model: LlamaModel, *, n_seq: int, tokens: int, threads: int, kv_unified: bool
) -> dict[str, float]:
    """Prefill ``n_seq`` different prompts, then decode until every reply ends; return
    prefill and decode times and the decode throughput (tokens of all sequences per second)."""
    engine = BatchedLlama(
        model,
        n_ctx=max(1024, n_seq * (tokens + 128)),
        n_batch=512,
        n_seq_max=n_seq,
        n_threads=threads,
        kv_unified=kv_unified,
    )
    try:
        params = SamplingParams(max_tokens=tokens)
        for i in range(n_seq):
            topic = TOPICS[i % len(TOPICS)]
            messages = [{"role": "user", "content": f"Write a long story about {topic}."}]
            engine.add(f"s{i}", f"c{i}", messages, params)
        t0 = time.perf_counter()
        # Every prompt fits one step's prefill budget: the first step prefills them all and
        # samples each first token; every later step decodes one token per sequence.
        engine.step(max_prefill_tokens=512 - n_seq)
        t1 = time.perf_counter()
        c1 = time.process_time()
        decode_steps = 0
        while engine.active():
            engine.step(max_prefill_tokens=0)
            decode_steps += 1
        t2 = time.perf_counter()
        c2 = time.process_time()
        decode_tokens = engine.counters.decode_tokens
        return {
            "prefill_s": t1 - t0,
            "prompt_tokens": float(engine.counters.prefill_tokens),
            "decode_s": t2 - t1,
            "decode_steps": float(decode_steps),
            "decode_tokens": float(decode_tokens),
            "tok_per_s": decode_tokens / (t2 - t1) if t2 > t1 else 0.0,
            "step_ms": 1000 * (t2 - t1) / max(1, decode_steps),
            # CPU seconds are far less disturbed by other processes than wall time on a shared
            # box (with one thread; more threads also count their spin-waiting).
            "tok_per_cpu_s": decode_tokens / (c2 - c1) if c2 > c1 else 0.0,
        }
    finally:
        engine.close()


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, nargs="+", default=[1, 8])
    parser.add_argument("--tokens", type=int, default=64, help="max tokens per reply")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--repeats", type=int, default=3, help="runs per configuration")
    parser.add_argument("--unified", action="store_true", help="also measure kv_unified=True")
    args = parser.parse_args(argv)
    model = LlamaModel(bundled_model_files().llm_gguf)
    layouts = [False, True] if args.unified else [False]
    print(
        f"model={model.path.name} threads={args.threads} max_tokens={args.tokens} "
        f"cpus={os.cpu_count()} loadavg={os.getloadavg()[0]:.1f}"
    )
    try:
        # Interleave configurations so that a noisy neighbour hits them alike.
        for rep in range(args.repeats):
            for unified in layouts:
                for n in args.sequences:
                    r = measure(
                        model,
                        n_seq=n,
                        tokens=args.tokens,
                        threads=args.threads,
                        kv_unified=unified,
                    )
                    print(
                        f"run={rep} kv_unified={unified!s:5} sequences={n:2d} "
                        f"decode={r['tok_per_s']:6.1f} tok/s ({r['tok_per_cpu_s']:6.1f} tok/cpu-s) "
                        f"step={r['step_ms']:6.1f} ms "
                        f"prefill={r['prompt_tokens']:.0f} tok in {1000 * r['prefill_s']:.0f} ms",
                        flush=True,
                    )
    finally:
        model.close()
    return 0


if __name__ == "__main__":
    sys.exit(main())
