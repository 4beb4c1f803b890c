"""Random command sequences against both policies: bookkeeping invariants always hold and every
accepted request ends in exactly one terminal state (nothing is lost, nothing is doubled)."""

from __future__ import annotations

import random

import pytest

from worker.inference.scheduler import (
    Batch,
    Engine,
    Request,
    RequestStatus,
    SchedulerConfig,
    SchedulerFullError,
    Stage,
    StepOutput,
    make_scheduler,
)
from worker.inference.scheduler.base import BaseScheduler

STAGES = [Stage.LLM_FIRST_CLAUSE, Stage.LLM_REST]


def check(s: BaseScheduler, requests: dict[str, Request], batch: Batch | None) -> None:
    live = [r for r in requests.values() if not r.status.is_done]
    assert all(s.get(r.request_id) is r for r in live)
    assert all(s.get(r.request_id) is None for r in requests.values() if r.status.is_done)
    waiting = [r for r in live if r.status is RequestStatus.WAITING]
    assert s.num_waiting == len(waiting) <= s.config.max_waiting
    for call in {r.call_id for r in waiting}:
        assert sum(r.call_id == call for r in waiting) <= s.config.max_waiting_per_call
    assert s.num_active == sum(r.holds_slot for r in live) <= s.stats(0.0).slots
    running = {r.request_id for r in live if r.status is RequestStatus.RUNNING}
    in_batch = {r.request_id for r in batch.requests} if batch else set()
    assert running <= in_batch
    if batch:
        assert batch.size == len(in_batch) <= s.config.max_batch


@pytest.mark.parametrize("mode", ["deadline", "serial"])
@pytest.mark.parametrize("seed", range(4))
def test_random_commands_keep_the_books(mode: str, seed: int) -> None:
    rng = random.Random(seed)
    config = SchedulerConfig(max_batch=4, max_active=6, max_waiting=10, max_waiting_per_call=3)
    s = make_scheduler(Engine.LLM, config, mode=mode)  # type: ignore[arg-type]
    requests: dict[str, Request] = {}
    released: list[str] = []
    now, batch, n = 0.0, None, 0
    for _ in range(800):
        op = rng.random()
        if op < 0.35:
            n += 1
            stage = rng.choice(STAGES)
            r = Request(f"r{n}", f"c{rng.randrange(5)}", stage, now, now + rng.uniform(0, 1), 1.0)
            try:
                s.add_request(r, now)
                requests[r.request_id] = r
            except SchedulerFullError:
                assert r.status is RequestStatus.WAITING and s.get(r.request_id) is None
        elif op < 0.45 and requests:
            rid = rng.choice(list(requests))
            was = requests[rid].status
            assert s.abort(rid) is (not was.is_done)
            if was is RequestStatus.STREAMING:
                released.append(rid)
        elif batch is None:
            batch = s.schedule(now)
            assert sorted(batch.release_ids) == sorted(released)
            released.clear()
            if not batch:
                batch = None
        else:
            now += rng.uniform(0.001, 0.05)
            outs = []
            for r in batch.requests:
                kind = rng.random()
                if kind < 0.4:
                    outs.append(StepOutput(r.request_id, done=True))
                elif kind < 0.45:
                    outs.append(StepOutput(r.request_id, error="boom"))
                elif kind < 0.5:
                    continue  # a missing output fails the request
                elif r.stage is Stage.LLM_FIRST_CLAUSE and kind < 0.7:
                    outs.append(StepOutput(r.request_id, next_stage=Stage.LLM_REST, slack_s=0.5))
                else:
                    outs.append(StepOutput(r.request_id, units=1.0))
            s.update_from_output(batch, outs, 0.01, now)
            batch = None
        check(s, requests, batch)
    # Drain: everything accepted reaches exactly one terminal state.
    if batch is not None:
        s.update_from_output(batch, [], 0.01, now)
    for rid in list(requests):
        s.abort(rid)
    assert not s.schedule(now)
    assert all(r.status.is_done for r in requests.values())
    assert s.finished + s.failed + s.cancelled == len(requests)
    assert s.finished == sum(r.status is RequestStatus.FINISHED for r in requests.values())
