"""Prefix sharing across calls (``share_prefixes``, on in the server's deadline mode): a new call
whose prompt starts like another cached call's (the agent's system prompt) copies that KV
instead of prefilling it, and its greedy output is exactly what it is without sharing."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from worker.inference.engines.llama_batch import BatchedLlama, SamplingParams
from worker.inference.engines.llama_batch_model import ChatMessage, LlamaModel
from worker.inference.engines.llama_kv import SequenceTable
from worker.models import bundled_model_files

SYSTEM = "You are a helpful call center agent for an online shop. Answer briefly and politely."
QUESTIONS = ["Where is my order?", "Can I change my delivery address?", "Do you ship abroad?"]
GREEDY = SamplingParams(max_tokens=16)


def _chat(question: str) -> list[ChatMessage]:
    return [{"role": "system", "content": SYSTEM}, {"role": "user", "content": question}]


@pytest.fixture(scope="module")
def model() -> Iterator[LlamaModel]:
    m = LlamaModel(bundled_model_files().llm_gguf)
    yield m
    m.close()


def _run(engine: BatchedLlama, key: str, call: str, question: str) -> str:
    engine.add(key, call, _chat(question), GREEDY)
    text = ""
    while key in engine.active():
        for out in engine.step(64):
            if out.seq_key == key:
                text += out.text
    return text


@pytest.mark.integration
@pytest.mark.parametrize("unified", [False, True])
def test_new_call_copies_a_shared_prefix_and_answers_the_same(
    model: LlamaModel, unified: bool
) -> None:
    with BatchedLlama(model, n_ctx=2048, n_batch=128, n_seq_max=4, n_threads=1) as plain:
        expected = [_run(plain, f"p{i}", f"pc{i}", q) for i, q in enumerate(QUESTIONS)]
    with BatchedLlama(
        model,
        n_ctx=2048,
        n_batch=128,
        n_seq_max=4,
        n_threads=1,
        kv_unified=unified,
        share_prefixes=True,
    ) as engine:
        first = _run(engine, "s0", "call-0", QUESTIONS[0])
        assert engine.counters.copied_tokens == 0  # nothing to share yet
        prefill_before = engine.counters.prefill_tokens
        second = _run(engine, "s1", "call-1", QUESTIONS[1])
        shared = len(model.chat_tokens(_chat(""))) // 2  # at least the system prompt's part
        assert engine.counters.copied_tokens >= shared
        assert engine.counters.prefill_tokens - prefill_before < len(
            model.chat_tokens(_chat(QUESTIONS[1]))
        )
        engine.verify_kv()
        # The donor keeps its own cache; both calls go on correctly, concurrently too.
        engine.add("s2", "call-2", _chat(QUESTIONS[2]), GREEDY)
        third = _run(engine, "s0b", "call-0", QUESTIONS[0])
        while engine.active():
            engine.step(64)
        engine.verify_kv()
    assert [first, second] == expected[:2]
    assert third == expected[0]


def test_table_picks_the_longest_prefix_of_another_call_and_never_evicts_it() -> None:
    table = SequenceTable(2, 100, shared=False, share_prefixes=True)
    a = table.admit("a", [1, 2, 3, 4, 5], 4)
    assert a is not None and a.copy_from is None
    table.append("a", [1, 2, 3, 4, 5, 9])
    table.release("a")
    b = table.admit("b", [1, 2, 3, 7], 4)
    assert b is not None and b.copy_from == a.seq_id and b.reused == 3 and b.evicted == ()
    table.append("b", [7])
    table.release("b")
    # Both sequences taken: a third call evicts the LRU idle one, but not its donor.
    c = table.admit("c", [1, 2, 3, 4, 8], 4)
    assert c is not None and c.copy_from == a.seq_id and c.reused == 4
    assert c.evicted == (b.seq_id,)
    off = SequenceTable(2, 100, shared=False)
    assert off.admit("a", [1, 2, 3], 4) is not None
    off.append("a", [1, 2, 3])
    off.release("a")
    plan = off.admit("b", [1, 2, 3, 4], 4)
    assert plan is not None and plan.copy_from is None and plan.reused == 0


def test_a_single_idle_donor_is_evicted_rather_than_blocking_the_request() -> None:
    table = SequenceTable(1, 100, shared=False, share_prefixes=True)
    table.admit("a", [1, 2, 3], 4)
    table.append("a", [1, 2, 3])
    table.release("a")
    plan = table.admit("b", [1, 2, 3, 4], 4)
    assert plan is not None and plan.copy_from is None and plan.reused == 0
    assert plan.evicted == (0,) and table.get("a") is None
