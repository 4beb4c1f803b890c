"""The deadline-aware scheduler of one engine: a pure step function over explicit request states.

Contract with the engine owner thread (the only code that may touch a scheduler)::

    while running:
        for cmd in inbox.drain():        # sent by the event loop; never called from another thread
            sched.add_request(req, now)  # may raise SchedulerFullError: answer `overloaded`
            sched.abort(req_id)          # client cancelled or vanished; applied between steps
        batch = sched.schedule(now)      # pure: picks requests and batch size, no I/O, no clock
        engine.release(batch.release_ids)          # free state of requests cancelled meanwhile
        if not batch: wait for the inbox; continue
        outputs, step_s = engine.step(batch)       # the model work, on this thread only
        result = sched.update_from_output(batch, outputs, step_s, now)
        engine.release(result.cancelled)           # aborted while in the step: drop their output
        post result + sched.stats(now) to the event loop

``now`` is always passed in (monotonic seconds), which makes every decision reproducible on
virtual time in tests. Ordering: critical work (final transcripts, the LLM's first clause, the
first TTS clause) before slack work, then earliest deadline first; slack work that waited longer
than ``aging_ms`` or whose deadline is within ``slack_guard_ms`` counts as critical, so no call
starves. Batch size: the largest batch the cost model says pays (per-item cost falls) whose
predicted step time still meets the most urgent deadline. See docs/scheduler.md.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable

from .base import BaseScheduler, EngineStats, SchedulerConfig
from .cost_model import CostModel
from .request import Engine, Request, RequestStatus

__all__ = ["EngineStats", "Scheduler", "SchedulerConfig"]


class Scheduler(BaseScheduler):
    """Deadline-aware scheduler with cost-model batch sizing (``mode: deadline``)."""

    mode = "deadline"

    def __init__(
        self,
        engine: Engine,
        config: SchedulerConfig | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        super().__init__(engine, config, cost_model)
        self._explorations = 0

    def priority(self, req: Request, now: float) -> tuple[int, float, int]:
        """Sort key, smallest first: (0 critical / 1 slack, effective deadline, arrival order).

        Slack work becomes critical once it waited ``aging_ms`` (fairness: no call starves behind
        a stream of fresh critical work) or when its deadline is within ``slack_guard_ms`` (the
        caller is about to hear a gap). The effective deadline is capped at ready time + aging
        so that aged work also sorts ahead of fresh critical work.
        """
        aging = self.config.aging_ms / 1000.0
        waited = now - req.ready_since
        critical = (
            req.stage.critical
            or waited >= aging
            or req.deadline - now <= self.config.slack_guard_ms / 1000.0
        )
        effective = min(req.deadline, req.ready_since + aging)
        return (0 if critical else 1, effective, self._order[req.request_id])

    def _select(self, now: float) -> list[Request]:
        ready = [
            r
            for r in self._live.values()
            if r.status in (RequestStatus.WAITING, RequestStatus.STREAMING)
        ]
        ready.sort(key=lambda r: self.priority(r, now))
        free = self.config.slots - sum(1 for r in ready if r.status is RequestStatus.STREAMING)
        candidates: list[Request] = []
        for r in ready:
            if len(candidates) == self.config.max_batch:
                break
            if r.status is RequestStatus.WAITING:
                if free <= 0:
                    continue  # no engine slot: it waits for a streaming request to end
                free -= 1
            candidates.append(r)
        if not candidates:
            return []
        size = self._batch_size(candidates, now)
        return candidates[:size]

    def _batch_size(self, candidates: list[Request], now: float) -> int:
        """Largest paying batch that meets the head's deadline (see module docstring)."""
        model = self.cost_model
        n = len(candidates)
        prefix = list(itertools.accumulate(r.units for r in candidates))
        pays = model.batch_size_for(prefix)
        head = candidates[0]
        head_deadline = self.priority(head, now)[1]

        def fits(b: int) -> bool:
            return now + model.predict(b, prefix[b - 1]) <= head_deadline

        feasible = [b for b in range(1, pays + 1) if fits(b)]
        # When even a batch of one is late the head misses anyway: serve as many as pays.
        size = max(feasible) if feasible else pays
        every = self.config.explore_every
        if every and n > 1 and self._step % every == every - 1:
            size = self._explore(
                size, n, fits, free_to_grow=not feasible or not head.stage.critical
            )
        return size

    def _explore(
        self, size: int, n: int, fits: Callable[[int], bool], *, free_to_grow: bool
    ) -> int:
        """Now and then run the power-of-two size (or ``n``) measured longest ago instead, so
        that a wrong prior or stale knowledge cannot lock the cost model in. Growing the batch
        never breaks a deadline the model thinks critical work can meet; shrinking only makes
        the head's step shorter."""
        sizes = {n}
        b = 1
        while b < n:
            sizes.add(b)
            b *= 2
        sizes.discard(size)
        if not free_to_grow:
            sizes = {b for b in sizes if b < size or fits(b)}
        if not sizes:
            return size
        self._explorations += 1
        return self.cost_model.stalest_size(sizes)
