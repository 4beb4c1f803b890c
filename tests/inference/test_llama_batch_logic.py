"""Unit tests of the batched LLM engine's pure parts: sampling, stop strings, UTF-8 streaming
and the sequence/KV-cell bookkeeping. No model is loaded here."""

from __future__ import annotations

import numpy as np
import pytest

from worker.inference.engines.llama_kv import SequenceTable, common_prefix_len
from worker.inference.engines.llama_sampling import (
    SamplingParams,
    StopStringFilter,
    TokenSampler,
    Utf8Stream,
)

# -- SamplingParams ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"max_tokens": 0},
        {"temperature": -0.1},
        {"top_p": 0.0},
        {"top_p": 1.5},
        {"stop": ("",)},
        {"stop": tuple(str(i) for i in range(17))},
        {"seed": -1},
    ],
)
def test_invalid_sampling_params_are_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(ValueError):
        SamplingParams(**kwargs)  # type: ignore[arg-type]


def test_single_stop_string_is_not_split_into_characters() -> None:
    assert SamplingParams(stop="END").stop == ("END",)  # type: ignore[arg-type]


# -- TokenSampler --------------------------------------------------------------------------------


def test_greedy_picks_the_first_maximum() -> None:
    logits = np.array([0.1, 3.0, -1.0, 3.0], dtype=np.float32)
    assert TokenSampler(SamplingParams(temperature=0.0)).sample(logits) == 1


def test_seeded_sampling_is_reproducible_and_seed_dependent() -> None:
    rng = np.random.default_rng(0)
    logits = rng.normal(size=1000).astype(np.float32)

    def draw(seed: int) -> list[int]:
        sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=0.9, seed=seed))
        return [sampler.sample(logits) for _ in range(50)]

    assert draw(7) == draw(7)
    assert draw(7) != draw(8)


def test_top_p_only_samples_from_the_nucleus() -> None:
    # Probabilities ~0.6, 0.3, 0.1 (plus a negligible tail); top_p=0.8 keeps tokens 0 and 1.
    logits = np.log(np.array([0.6, 0.3, 0.1, 1e-9], dtype=np.float32))
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=0.8, seed=1))
    seen = {sampler.sample(logits) for _ in range(400)}
    assert seen == {0, 1}


def test_wide_nucleus_beyond_the_first_partition_is_sampled_exactly() -> None:
    # 100 likely tokens with distinct probabilities, then a negligible tail of 1000.
    weights = np.concatenate([np.arange(200, 100, -1, dtype=np.float64), np.full(1000, 1e-9)])
    probs = weights / weights.sum()
    nucleus = int(np.searchsorted(np.cumsum(probs), 0.9)) + 1  # brute force: full sort
    assert 64 < nucleus < 100
    sampler = TokenSampler(SamplingParams(temperature=1.0, top_p=0.9, seed=3))
    logits = np.log(probs).astype(np.float32)
    seen = {sampler.sample(logits) for _ in range(3000)}
    assert max(seen) == nucleus - 1
    assert len(seen) > 64


def test_sampling_does_not_modify_the_logits() -> None:
    logits = np.array([1.0, 2.0, 3.0], dtype=np.float32)
    TokenSampler(SamplingParams(temperature=0.7, top_p=0.5, seed=0)).sample(logits)
    assert logits.tolist() == [1.0, 2.0, 3.0]


# -- Utf8Stream ----------------------------------------------------------------------------------


def test_utf8_characters_split_over_pieces_are_held_until_complete() -> None:
    data = "héllo 👋".encode()
    stream = Utf8Stream()
    out = [stream.push(data[i : i + 1]) for i in range(len(data))]
    assert "".join(out) + stream.finish() == "héllo 👋"
    # The 4-byte emoji only appears once its last byte arrived.
    assert out[-2] == "" and out[-1] == "👋"


def test_incomplete_utf8_at_the_end_becomes_a_replacement_character() -> None:
    stream = Utf8Stream()
    assert stream.push(b"ok\xf0\x9f") == "ok"
    assert stream.finish() == "\ufffd"


# -- StopStringFilter ----------------------------------------------------------------------------


def test_text_without_stop_strings_passes_through() -> None:
    f = StopStringFilter(())
    assert f.push("hello") == "hello"
    assert f.flush() == ""


def test_stop_string_spanning_pieces_is_never_emitted() -> None:
    f = StopStringFilter(("User:",))
    emitted = [f.push(p) for p in ["Sure, bye.", " Us", "er", ": hi"]]
    assert emitted == ["Sure, bye.", " ", "", ""]
    assert f.stopped
    assert "".join(emitted) == "Sure, bye. "


def test_held_prefix_is_released_when_it_stops_matching() -> None:
    f = StopStringFilter(("User:",))
    assert f.push("a Us") == "a "
    assert f.push("ually") == "Usually"
    assert not f.stopped


def test_earliest_of_several_stop_strings_wins() -> None:
    f = StopStringFilter(("XYZ", "B"))
    assert f.push("aaBbbXYZ") == "aa"
    assert f.push("more") == ""


def test_flush_releases_a_held_tail_when_generation_ends() -> None:
    f = StopStringFilter(("###",))
    assert f.push("end #") == "end "
    assert f.flush() == "#"


# -- SequenceTable -------------------------------------------------------------------------------


def test_common_prefix_len() -> None:
    assert common_prefix_len([1, 2, 3], [1, 2, 4]) == 2
    assert common_prefix_len([1, 2], [1, 2, 3]) == 2
    assert common_prefix_len([], [1]) == 0


def test_new_calls_get_distinct_sequences() -> None:
    table = SequenceTable(n_seq=2, n_cells=100)
    a = table.admit("a", [1, 2, 3], 5)
    b = table.admit("b", [1, 2, 3], 5)
    assert a is not None and b is not None
    assert {a.seq_id, b.seq_id} == {0, 1}
    assert a.reused == 0 and a.evicted == ()
    assert table.cells_reserved == 16


def test_next_turn_reuses_the_common_prefix_but_always_prefills_one_token() -> None:
    table = SequenceTable(n_seq=1, n_cells=100)
    assert table.admit("a", [1, 2, 3], 4) is not None
    table.append("a", [1, 2, 3])
    table.append("a", [9, 9])  # two generated tokens were decoded
    table.release("a")
    plan = table.admit("a", [1, 2, 3, 9, 7, 7], 4)
    assert plan is not None and plan.reused == 4 and plan.seq_id == 0
    table.release("a", keep=4)
    # An identical prompt still prefills its last token (its logits give the first token).
    plan = table.admit("a", [1, 2, 3, 9], 4)
    assert plan is not None and plan.reused == 3


def test_busy_call_cannot_be_admitted_twice() -> None:
    table = SequenceTable(n_seq=2, n_cells=100)
    assert table.admit("a", [1], 1) is not None
    with pytest.raises(RuntimeError):
        table.admit("a", [1], 1)


def test_oversized_request_is_refused() -> None:
    table = SequenceTable(n_seq=1, n_cells=10)
    with pytest.raises(ValueError, match="exceeds"):
        table.admit("a", [1] * 8, 3)


def test_lru_idle_call_is_evicted_for_cells_and_busy_calls_never_are() -> None:
    table = SequenceTable(n_seq=4, n_cells=20)
    for call in ("old", "new"):
        assert table.admit(call, [1] * 6, 2) is not None
        table.append(call, [1] * 6)
        table.release(call)
    assert table.admit("busy", [2] * 4, 2) is not None  # reserves 6, free is now 2
    plan = table.admit("c", [3] * 5, 2)
    assert plan is not None
    assert plan.evicted == (0,)  # the sequence of "old", the least recently used
    assert table.get("old") is None and table.get("new") is not None
    assert table.evictions == 1
    # 1 cell is free and only "new" (6 cells) is evictable: a request needing 15 cells waits
    # and nothing is evicted for it.
    assert table.admit("d", [4] * 7, 8) is None
    assert table.get("new") is not None and table.evictions == 1


def test_lru_idle_call_is_evicted_when_sequences_run_out() -> None:
    table = SequenceTable(n_seq=2, n_cells=100)
    for call in ("a", "b"):
        assert table.admit(call, [1], 1) is not None
        table.append(call, [1])
        table.release(call)
    plan = table.admit("c", [5, 6], 1)
    assert plan is not None and plan.evicted == (0,) and plan.seq_id == 0
    assert table.get("a") is None


def test_request_waits_when_every_sequence_is_busy() -> None:
    table = SequenceTable(n_seq=1, n_cells=100)
    assert table.admit("a", [1], 1) is not None
    assert table.admit("b", [1], 1) is None


def test_drop_frees_the_sequence() -> None:
    table = SequenceTable(n_seq=1, n_cells=100)
    assert table.admit("a", [1], 1) is not None
    table.release("a")
    assert table.drop("a") == 0
    assert table.drop("a") is None
    plan = table.admit("b", [1], 1)
    assert plan is not None and plan.seq_id == 0 and plan.evicted == ()
