"""What each synthetic caller does and when: a seeded, reproducible plan per benchmark point.

A plan is fixed before any request is sent, so the scheduler run and the serial run at the same
N replay exactly the same callers (same start offsets, same utterances, same pauses). Only what
depends on the server (how long the answer takes, how long it plays) is decided at run time.
"""

from __future__ import annotations

import random
from dataclasses import dataclass

__all__ = ["CallPlan", "TurnPlan", "make_call_plans"]


@dataclass(frozen=True)
class TurnPlan:
    """One caller turn: which utterance is spoken, and the pause after the answer was heard."""

    utterance: int
    """Index into the list of cached caller utterances."""
    pause_after_s: float
    """Silence after the agent's answer finished playing, before the caller speaks again."""


@dataclass(frozen=True)
class CallPlan:
    """One synthetic call: when it starts (relative to the point's start) and its turns."""

    call_index: int
    start_offset_s: float
    turns: tuple[TurnPlan, ...]


def make_call_plans(
    n_calls: int,
    *,
    turns_per_call: int,
    n_utterances: int,
    seed: int,
    stagger_s: float,
    pause_s: tuple[float, float] = (0.4, 1.2),
) -> list[CallPlan]:
    """Plans for ``n_calls`` concurrent callers.

    Start offsets are drawn uniformly from ``[0, stagger_s)`` so that turns do not all align;
    utterances are drawn so that consecutive turns of one call differ (a caller does not repeat
    themselves); pauses are uniform in ``pause_s``. The random stream is derived from ``seed``
    and ``n_calls`` only, so a plan is reproducible and identical across scheduling modes.
    """
    if n_calls < 1:
        raise ValueError(f"n_calls must be >= 1, got {n_calls}")
    if turns_per_call < 1:
        raise ValueError(f"turns_per_call must be >= 1, got {turns_per_call}")
    if n_utterances < 1:
        raise ValueError(f"n_utterances must be >= 1, got {n_utterances}")
    if stagger_s < 0:
        raise ValueError(f"stagger_s must be >= 0, got {stagger_s}")
    lo, hi = pause_s
    if not 0 <= lo <= hi:
        raise ValueError(f"pause_s must be an ordered pair of non-negative seconds, got {pause_s}")
    rng = random.Random(f"voicestack-bench:{seed}:{n_calls}")
    plans: list[CallPlan] = []
    for call_index in range(n_calls):
        offset = rng.random() * stagger_s
        turns: list[TurnPlan] = []
        previous = -1
        for _ in range(turns_per_call):
            utterance = rng.randrange(n_utterances)
            if utterance == previous and n_utterances > 1:
                # Shift to the next utterance rather than redraw: one draw per turn keeps the
                # random stream (and so every later value) independent of this collision.
                utterance = (utterance + 1) % n_utterances
            previous = utterance
            turns.append(TurnPlan(utterance=utterance, pause_after_s=rng.uniform(lo, hi)))
        plans.append(CallPlan(call_index=call_index, start_offset_s=offset, turns=tuple(turns)))
    return plans
