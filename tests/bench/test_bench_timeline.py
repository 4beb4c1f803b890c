"""Seeded call plans: reproducible, within their ranges, identical across modes."""

from __future__ import annotations

import itertools
from typing import Any

import pytest

from worker.bench.timeline import CallPlan, make_call_plans


def plans(n: int, seed: int = 0, **kw: Any) -> list[CallPlan]:
    args: dict[str, Any] = {
        "turns_per_call": 4,
        "n_utterances": 10,
        "seed": seed,
        "stagger_s": 3.0,
    }
    args.update(kw)
    return make_call_plans(n, **args)


def test_same_seed_same_plan_and_different_seed_differs() -> None:
    assert plans(8) == plans(8)
    assert plans(8) != plans(8, seed=1)


def test_shape_and_ranges() -> None:
    p = plans(16, pause_s=(0.5, 1.0))
    assert [c.call_index for c in p] == list(range(16))
    for call in p:
        assert 0.0 <= call.start_offset_s < 3.0
        assert len(call.turns) == 4
        for turn in call.turns:
            assert 0 <= turn.utterance < 10
            assert 0.5 <= turn.pause_after_s <= 1.0


def test_starts_are_staggered_not_aligned() -> None:
    offsets = [c.start_offset_s for c in plans(16)]
    assert len(set(offsets)) == 16
    assert max(offsets) - min(offsets) > 1.0


def test_a_caller_never_repeats_the_previous_utterance() -> None:
    for call in plans(32, n_utterances=2):
        seq = [t.utterance for t in call.turns]
        assert all(a != b for a, b in itertools.pairwise(seq))


def test_single_utterance_is_allowed() -> None:
    assert all(t.utterance == 0 for c in plans(3, n_utterances=1) for t in c.turns)


def test_zero_stagger_starts_together() -> None:
    assert {c.start_offset_s for c in plans(4, stagger_s=0.0)} == {0.0}


@pytest.mark.parametrize(
    "kw",
    [
        {"turns_per_call": 0},
        {"n_utterances": 0},
        {"stagger_s": -1.0},
        {"pause_s": (1.0, 0.5)},
        {"pause_s": (-0.1, 0.5)},
    ],
)
def test_invalid_arguments(kw: dict[str, Any]) -> None:
    with pytest.raises(ValueError):
        plans(2, **kw)


def test_zero_calls_rejected() -> None:
    with pytest.raises(ValueError):
        plans(0)
