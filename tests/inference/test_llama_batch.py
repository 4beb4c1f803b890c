"""Integration tests of the continuous-batching LLM engine with the real bundled SmolLM2 model.

The reference for every equivalence check is the same prompt run alone (one sequence, no
batching); that reference is itself checked against llama-cpp-python's high-level ``Llama``.
"""

from __future__ import annotations

import random
import threading
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.inference.engines.llama_batch import (
    BatchedLlama,
    EngineFullError,
    SamplingParams,
    StepOutput,
)
from worker.inference.engines.llama_batch_model import ChatMessage, LlamaModel, ModelLoadError
from worker.models import bundled_model_files

pytestmark = pytest.mark.integration

PROMPTS = [
    "What is the capital of France?",
    "Tell me a joke about cats.",
    "Count from one to ten.",
    "Name three colors of the rainbow.",
    "Why is the sky blue?",
]
MAX_TOKENS = 24
GREEDY = SamplingParams(max_tokens=MAX_TOKENS)


def chat(prompt: str) -> list[ChatMessage]:
    return [{"role": "user", "content": prompt}]


@dataclass
class Result:
    tokens: list[int]
    text: str
    finish_reason: str | None
    outputs: list[StepOutput]


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(bundled_model_files().llm_gguf)
    yield m
    m.close()


def make_engine(model: LlamaModel, **kwargs: Any) -> BatchedLlama:
    # One thread: ggml's worker threads spin while they wait for each other, which on a box
    # shared with other test processes makes two threads several times slower than one.
    opts: dict[str, Any] = {"n_ctx": 1024, "n_batch": 256, "n_seq_max": 4, "n_threads": 1}
    return BatchedLlama(model, **(opts | kwargs))


def collect(results: dict[str, Result], outputs: Sequence[StepOutput]) -> None:
    for o in outputs:
        r = results.setdefault(o.seq_key, Result([], "", None, []))
        assert r.finish_reason is None, f"{o.seq_key} produced output after finishing"
        r.outputs.append(o)
        r.tokens.append(o.token)
        r.text += o.text
        if o.finished:
            r.finish_reason = o.finish_reason


def run_to_end(
    engine: BatchedLlama, results: dict[str, Result], max_prefill_tokens: int = 256
) -> None:
    for _ in range(10_000):
        if not engine.active():
            return
        collect(results, engine.step(max_prefill_tokens))
    raise AssertionError("engine did not finish")


_reference_cache: dict[tuple[str, SamplingParams], Result] = {}


def alone(model: LlamaModel, messages: list[ChatMessage], params: SamplingParams) -> Result:
    """The unbatched reference: the request alone in a one-sequence engine."""
    key = (repr(messages), params)
    if key not in _reference_cache:
        with make_engine(model, n_seq_max=1) as engine:
            engine.add("ref", "ref", messages, params)
            results: dict[str, Result] = {}
            run_to_end(engine, results)
        _reference_cache[key] = results["ref"]
    return _reference_cache[key]


def test_unbatched_reference_matches_llama_high_level_greedy(model: LlamaModel) -> None:
    from llama_cpp import Llama

    ref = alone(model, chat(PROMPTS[0]), GREEDY)
    llm = Llama(model_path=str(model.path), n_ctx=1024, n_threads=1, flash_attn=True, verbose=False)
    try:
        prompt = model.chat_tokens(chat(PROMPTS[0]))
        out = llm.create_completion(
            prompt=prompt,
            max_tokens=MAX_TOKENS,
            temperature=0.0,
            top_k=0,
            top_p=1.0,
            min_p=0.0,
            repeat_penalty=1.0,
        )
    finally:
        llm.close()
    assert ref.text
    assert not isinstance(out, Iterator)  # stream=False returns one response
    assert out["choices"][0]["text"] == ref.text


def test_batched_greedy_equals_each_prompt_alone(model: LlamaModel) -> None:
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        for i, p in enumerate(PROMPTS[:4]):
            engine.add(f"r{i}", f"c{i}", chat(p), GREEDY)
        run_to_end(engine, results)
        engine.verify_kv()
        # One decode served all four: far fewer steps than 4 separate generations.
        assert engine.counters.steps <= MAX_TOKENS + 1
    for i, p in enumerate(PROMPTS[:4]):
        ref = alone(model, chat(p), GREEDY)
        assert results[f"r{i}"].tokens == ref.tokens, p
        assert results[f"r{i}"].text == ref.text


def test_staggered_arrival_with_chunked_prefill_equals_alone(model: LlamaModel) -> None:
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        engine.add("r0", "c0", chat(PROMPTS[0]), GREEDY)
        engine.add("r1", "c1", chat(PROMPTS[1]), GREEDY)
        for _ in range(8):
            collect(results, engine.step(max_prefill_tokens=16))
        engine.add("r2", "c2", chat(PROMPTS[2]), GREEDY)
        # r2's prompt (>16 tokens) is prefilled in chunks while r0 and r1 keep decoding.
        out = engine.step(max_prefill_tokens=16)
        assert {o.seq_key for o in out} == {"r0", "r1"}
        collect(results, out)
        for _ in range(4):
            collect(results, engine.step(max_prefill_tokens=16))
        engine.add("r3", "c3", chat(PROMPTS[3]), GREEDY)
        run_to_end(engine, results, max_prefill_tokens=16)
        engine.verify_kv()
    for i in range(4):
        assert results[f"r{i}"].tokens == alone(model, chat(PROMPTS[i]), GREEDY).tokens


def test_step_restricted_to_some_requests_leaves_the_others_untouched(
    model: LlamaModel,
) -> None:
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        engine.add("r0", "c0", chat(PROMPTS[0]), GREEDY)
        engine.add("r1", "c1", chat(PROMPTS[1]), GREEDY)
        for _ in range(3):
            out = engine.step(only={"r0"})
            assert [o.seq_key for o in out] == ["r0"]
            collect(results, out)
        assert engine.cached_tokens("c1") == 0  # r1 was admitted but never prefilled
        run_to_end(engine, results)
    for i in range(2):
        assert results[f"r{i}"].tokens == alone(model, chat(PROMPTS[i]), GREEDY).tokens


def test_cancelled_sequence_emits_nothing_and_leaks_into_no_other_call(
    model: LlamaModel,
) -> None:
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        for i in range(4):
            engine.add(f"r{i}", f"c{i}", chat(PROMPTS[i]), GREEDY)
        for _ in range(6):
            collect(results, engine.step())
        n_before = len(results["r1"].outputs)
        assert n_before > 0 and results["r1"].finish_reason is None
        assert engine.cancel("r1")
        assert not engine.cancel("r1")
        assert "r1" not in engine.active() and engine.free_slots() == 1
        # Only the prompt's KV stays (the call's cache); the generated tail is gone.
        prompt_len = results["r1"].outputs[0].prompt_tokens
        assert engine.cached_tokens("c1") == prompt_len
        engine.verify_kv()
        # A new call arrives: all four sequences are held, so it takes the cancelled call's
        # sequence (evicting its cache); its output must not see any of the old KV.
        engine.add("r4", "c4", chat(PROMPTS[4]), GREEDY)
        run_to_end(engine, results)
        assert engine.counters.evictions == 1
        assert engine.cached_tokens("c1") == 0
        engine.verify_kv()
    assert len(results["r1"].outputs) == n_before
    for i in (0, 2, 3, 4):
        assert results[f"r{i}"].tokens == alone(model, chat(PROMPTS[i]), GREEDY).tokens
    assert results["r1"].tokens == alone(model, chat(PROMPTS[1]), GREEDY).tokens[:n_before]


def test_cancel_mid_prefill_keeps_the_prefilled_prefix_and_drop_call_frees_it(
    model: LlamaModel,
) -> None:
    messages = chat(PROMPTS[2])
    prompt_len = len(model.chat_tokens(messages))
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        engine.add("early", "call", messages, GREEDY)
        assert engine.cancel("early")  # still waiting: nothing was in the KV
        assert engine.cached_tokens("call") == 0
        engine.add("partial", "call", messages, GREEDY)
        assert engine.step(max_prefill_tokens=8) == []  # 8 of the prompt's tokens prefilled
        assert engine.cancel("partial")
        assert engine.cached_tokens("call") == 8
        engine.verify_kv()
        engine.add("full", "call", messages, GREEDY)
        run_to_end(engine, results)
        assert results["full"].outputs[-1].reused_tokens == 8
        assert engine.counters.prefill_tokens == prompt_len  # 8 + the rest, nothing twice
        engine.drop_call("call")
        assert engine.cached_tokens("call") == 0
        engine.verify_kv()
        engine.add("fresh", "call", messages, GREEDY)
        run_to_end(engine, results)
        assert results["fresh"].outputs[-1].reused_tokens == 0
    reference = alone(model, messages, GREEDY).tokens
    assert results["full"].tokens == results["fresh"].tokens == reference


def test_max_tokens_and_stop_strings_are_honoured(model: LlamaModel) -> None:
    ref = alone(model, chat(PROMPTS[4]), GREEDY)
    words = ref.text.split()
    assert len(words) > 4, ref.text
    stop = " " + words[3]  # a stop string in the middle of the reference reply
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        engine.add("short", "c0", chat(PROMPTS[4]), SamplingParams(max_tokens=5))
        engine.add("stop", "c1", chat(PROMPTS[4]), SamplingParams(max_tokens=24, stop=(stop,)))
        run_to_end(engine, results)
    short = results["short"]
    assert short.finish_reason == "length"
    assert short.outputs[-1].completion_tokens == 5
    assert short.tokens == ref.tokens[:5]
    stopped = results["stop"]
    assert stopped.finish_reason == "stop"
    assert stopped.text == ref.text[: ref.text.index(stop)]
    assert stop not in stopped.text


def test_second_turn_prefills_only_the_new_suffix(model: LlamaModel) -> None:
    turn1 = chat(PROMPTS[0])
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        engine.add("t1", "call", turn1, GREEDY)
        run_to_end(engine, results)
        first = results["t1"]
        assert first.outputs[-1].reused_tokens == 0
        turn2 = [
            *turn1,
            {"role": "assistant", "content": first.text},
            {"role": "user", "content": "And of Germany?"},
        ]
        prefill_before = engine.counters.prefill_tokens
        engine.add("t2", "call", turn2, GREEDY)
        run_to_end(engine, results)
        second = results["t2"].outputs[-1]
        prefilled = engine.counters.prefill_tokens - prefill_before
        engine.verify_kv()
    # Everything turn 1 put in the KV (its prompt and the decoded reply) is reused.
    assert second.reused_tokens >= first.outputs[-1].prompt_tokens
    assert prefilled == second.prompt_tokens - second.reused_tokens
    assert prefilled < second.prompt_tokens // 2
    # Reusing the KV does not change what is said. Not token for token over the whole reply:
    # prefilling a suffix against cached cells sums in another order than one fresh prefill,
    # and with the portable (AVX2) kernels greedy decoding drifted apart after ~8 tokens
    # (measured); a corrupted or misaligned cache diverges from the first token.
    assert results["t2"].tokens[:4] == alone(model, turn2, GREEDY).tokens[:4]


def test_lru_eviction_under_a_tiny_shared_context_keeps_outputs_correct(
    model: LlamaModel,
) -> None:
    """Shared cell pool (kv_unified): the cells, not the sequence ids, run out."""
    results: dict[str, Result] = {}
    params = SamplingParams(max_tokens=16)
    with make_engine(model, n_ctx=256, n_seq_max=4, kv_unified=True) as engine:
        assert engine.n_ctx == engine.max_seq_tokens == 256
        for i in range(5):
            engine.add(f"r{i}", f"c{i}", chat(PROMPTS[i]), params)
            run_to_end(engine, results)
            engine.verify_kv()
        # Each call caches ~50 tokens: the fifth needs cells held by the four idle calls.
        assert engine.counters.evictions == 1
        assert engine.cached_tokens("c0") == 0  # the least recently used call went first
        assert all(engine.cached_tokens(f"c{i}") > 0 for i in range(1, 5))
        # An evicted call comes back: it is prefilled from scratch and still correct.
        engine.add("again", "c0", chat(PROMPTS[0]), params)
        run_to_end(engine, results)
        assert results["again"].outputs[-1].reused_tokens == 0
        engine.verify_kv()
    for i in range(5):
        assert results[f"r{i}"].tokens == alone(model, chat(PROMPTS[i]), params).tokens
    assert results["again"].tokens == results["r0"].tokens


def test_lru_eviction_of_sequence_ids_keeps_outputs_correct(model: LlamaModel) -> None:
    """Per-sequence pools (the default): a new call takes the LRU idle call's sequence."""
    results: dict[str, Result] = {}
    params = SamplingParams(max_tokens=16)
    with make_engine(model, n_seq_max=2) as engine:
        for i in range(4):
            engine.add(f"r{i}", f"c{i}", chat(PROMPTS[i]), params)
            run_to_end(engine, results)
            engine.verify_kv()
        assert engine.counters.evictions == 2
        assert [engine.cached_tokens(f"c{i}") > 0 for i in range(4)] == [False, False, True, True]
    for i in range(4):
        assert results[f"r{i}"].tokens == alone(model, chat(PROMPTS[i]), params).tokens


def test_shared_pool_output_does_not_depend_on_neighbour_content(model: LlamaModel) -> None:
    """With kv_unified a call's logits depend (slightly) on where its cells sit, but never on
    what other calls said: same layout, different neighbour tokens, identical output."""
    target = model.chat_tokens(chat(PROMPTS[3]))
    params = SamplingParams(max_tokens=8)

    def run(seed: int) -> tuple[list[int], list[str | None]]:
        rnd = random.Random(seed)
        results: dict[str, Result] = {}
        with make_engine(model, kv_unified=True) as engine:
            for i in range(3):
                neighbour = [rnd.randrange(1000, 40000) for _ in range(30)]
                engine.add_tokens(f"n{i}", f"n{i}", neighbour, params)
            engine.add_tokens("t", "t", target, params)
            run_to_end(engine, results)
        return results["t"].tokens, [results[f"n{i}"].finish_reason for i in range(3)]

    tokens_a, finish_a = run(1)
    tokens_b, finish_b = run(2)
    # Same layout in every step: every neighbour ran its full 8 tokens in both runs.
    assert finish_a == finish_b == ["length"] * 3
    assert tokens_a == tokens_b


def test_seeded_sampling_is_independent_of_batch_neighbours(model: LlamaModel) -> None:
    params = SamplingParams(max_tokens=16, temperature=0.9, top_p=0.95, seed=42)
    results: dict[str, Result] = {}
    with make_engine(model) as engine:
        engine.add("s", "c0", chat(PROMPTS[1]), params)
        engine.add("g", "c1", chat(PROMPTS[2]), GREEDY)
        run_to_end(engine, results)
    assert results["s"].tokens == alone(model, chat(PROMPTS[1]), params).tokens


def test_bad_input_is_refused_and_loses_nothing(model: LlamaModel) -> None:
    results: dict[str, Result] = {}
    with make_engine(model, n_seq_max=2, n_ctx=256) as engine:
        engine.add("ok", "c0", chat(PROMPTS[0]), GREEDY)
        with pytest.raises(ValueError, match="empty"):
            engine.add("x", "c9", [], GREEDY)
        with pytest.raises(ValueError, match="role"):
            engine.add("x", "c9", [{"role": "wizard", "content": "hi"}], GREEDY)
        with pytest.raises(ValueError, match="already active"):
            engine.add("ok", "c9", chat("hi"), GREEDY)
        with pytest.raises(ValueError, match="already has an active request"):
            engine.add("x", "c0", chat("hi"), GREEDY)
        with pytest.raises(ValueError, match="exceeds the context of"):
            engine.add("x", "c9", chat("word " * 400), GREEDY)
        engine.add("ok2", "c1", chat(PROMPTS[1]), GREEDY)
        with pytest.raises(EngineFullError):
            engine.add("x", "c9", chat("hi"), GREEDY)

        errors: list[BaseException] = []

        def other_thread() -> None:
            try:
                engine.step()
            except RuntimeError as err:
                errors.append(err)

        collect(results, engine.step())  # this thread is the owner
        t = threading.Thread(target=other_thread)
        t.start()
        t.join()
        assert len(errors) == 1 and "second thread" in str(errors[0])
        run_to_end(engine, results)
    assert results["ok"].tokens == alone(model, chat(PROMPTS[0]), GREEDY).tokens


def test_missing_or_corrupt_model_file_is_a_clear_error(tmp_path: Path) -> None:
    with pytest.raises(ModelLoadError, match="not found"):
        LlamaModel(tmp_path / "missing.gguf")
    garbage = tmp_path / "garbage.gguf"
    garbage.write_bytes(b"not a gguf file" * 100)
    with pytest.raises(ModelLoadError, match="could not load"):
        LlamaModel(garbage)


def test_cuda_device_needs_a_gpu_build(model: LlamaModel) -> None:
    import llama_cpp

    if llama_cpp.llama_supports_gpu_offload():
        with LlamaModel(model.path, device="cuda") as gpu_model:
            assert gpu_model.device == "cuda"
    else:
        with pytest.raises(ModelLoadError, match="no GPU offload"):
            LlamaModel(model.path, device="cuda")
