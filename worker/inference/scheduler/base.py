"""Bookkeeping shared by every scheduling policy: queues, states, aborts, outputs, stats.

A policy subclasses :class:`BaseScheduler` and implements ``_select(now)`` only. The contract
with the engine owner thread is in :mod:`.core`'s docstring and docs/scheduler.md.
"""

from __future__ import annotations

import itertools
import math
from collections.abc import Iterable
from dataclasses import dataclass

from pydantic import BaseModel, ConfigDict, Field

from .cost_model import CostModel, CostModelConfig
from .rates import DecayingRate
from .request import (
    Batch,
    Engine,
    Request,
    RequestStatus,
    SchedulerError,
    SchedulerFullError,
    Stage,
    StepOutput,
    StepResult,
)

__all__ = ["BaseScheduler", "EngineStats", "SchedulerConfig"]


class SchedulerConfig(BaseModel):
    """Per-engine scheduling settings (the policy itself is chosen by ``SchedulingConfig.mode``)."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    max_batch: int = Field(8, ge=1, le=256, description="most requests in one engine step")
    max_active: int | None = Field(
        None, ge=1, description="engine slots (e.g. LLM KV sequences); default max_batch"
    )
    max_waiting: int = Field(64, ge=1, description="bound of the waiting queue")
    max_waiting_per_call: int = Field(8, ge=1, description="bound of one call's waiting requests")
    aging_ms: float = Field(1000.0, gt=0, description="waiting longer than this counts as critical")
    slack_guard_ms: float = Field(
        50.0, ge=0, description="slack work this close to its deadline counts as critical"
    )
    explore_every: int = Field(
        16, ge=0, description="every n-th step try a neighbouring batch size (0: never)"
    )
    coalesce_interims: bool = True
    load_window_s: float = Field(10.0, gt=0, description="averaging window of the work rate")
    cost_model: CostModelConfig = Field(default_factory=CostModelConfig)

    @property
    def slots(self) -> int:
        """Engine slots: ``max_active`` or, by default, ``max_batch``."""
        return self.max_active if self.max_active is not None else self.max_batch


@dataclass(frozen=True)
class EngineStats:
    """A snapshot of one scheduler, posted by the engine thread to the event loop (admission,
    metrics). Immutable, so it can cross threads."""

    engine: Engine
    mode: str
    waiting: int
    active: int
    max_waiting: int
    slots: int
    steps: int
    finished: int
    failed: int
    cancelled: int
    coalesced: int
    refused: int
    deadline_misses: int
    misses_by_stage: tuple[tuple[Stage, int], ...]
    last_batch_size: int
    last_step_s: float
    capacity_units_per_s: float
    # Work units the engine ran per second (decayed average over ``load_window_s``): with the
    # capacity this is the utilisation; demand beyond capacity shows as queue depth instead.
    work_units_per_s: float
    load_window_s: float
    at: float  # the ``now`` of the snapshot


class BaseScheduler:
    """Bookkeeping shared by the deadline scheduler and the serial baseline.

    Subclasses implement :meth:`_select` only: which ready requests run in the next step.
    """

    mode: str = "base"

    def __init__(
        self,
        engine: Engine,
        config: SchedulerConfig | None = None,
        cost_model: CostModel | None = None,
    ) -> None:
        self.engine = Engine(engine)
        self.config = config or SchedulerConfig()
        self.cost_model = cost_model or CostModel(
            self.config.cost_model, max_batch=self.config.max_batch
        )
        self._live: dict[str, Request] = {}
        self._order: dict[str, int] = {}  # FIFO tie-break, stable across reprioritisation
        self._seq = itertools.count()
        self._waiting_interim: dict[str, str] = {}  # coalesce key -> waiting interim's id
        self._n_waiting = 0
        self._waiting_per_call: dict[str, int] = {}  # bounded by max_waiting entries
        self._abort_in_step: set[str] = set()
        self._release: list[str] = []
        self._in_flight: Batch | None = None
        self._step = 0
        self._work = DecayingRate(self.config.load_window_s)
        self._misses: dict[Stage, int] = {}
        self.finished = self.failed = self.cancelled = self.coalesced = self.refused = 0
        self.last_batch_size = 0
        self.last_step_s = 0.0

    # -- commands (from the owner thread, between steps) -------------------------------------

    def add_request(self, request: Request, now: float) -> str | None:
        """Queue a new request. Returns the id of the waiting interim it replaced, if any (that
        one is CANCELLED: its stream simply gets no interim for the older audio).

        Raises :class:`SchedulerFullError` at once when a bounded queue is full (nothing is
        changed then) and :class:`SchedulerError` for a request this engine cannot take.
        """
        if request.engine is not self.engine:
            raise SchedulerError(
                f"request {request.request_id} ({request.stage}) belongs to the "
                f"{request.engine} engine, not {self.engine}"
            )
        if request.status is not RequestStatus.WAITING:
            raise SchedulerError(f"request {request.request_id} is {request.status.name}")
        if request.request_id in self._live:
            raise SchedulerError(f"request {request.request_id} is already queued")
        replaced = self._coalescing_victim(request)
        waiting = self._n_waiting
        per_call = self._waiting_per_call.get(request.call_id, 0)
        if replaced is not None:
            waiting -= 1
            if self._live[replaced].call_id == request.call_id:
                per_call -= 1
        if waiting >= self.config.max_waiting:
            self.refused += 1
            raise SchedulerFullError(
                f"{self.engine} queue full: {waiting} requests waiting "
                f"(max_waiting={self.config.max_waiting})"
            )
        if per_call >= self.config.max_waiting_per_call:
            self.refused += 1
            raise SchedulerFullError(
                f"{self.engine} queue full for call {request.call_id}: {per_call} requests "
                f"waiting (max_waiting_per_call={self.config.max_waiting_per_call})"
            )
        if replaced is not None:
            self._finish(self._live[replaced], RequestStatus.CANCELLED)
            self.coalesced += 1
        self._live[request.request_id] = request
        self._order[request.request_id] = next(self._seq)
        self._n_waiting += 1
        self._waiting_per_call[request.call_id] = self._waiting_per_call.get(request.call_id, 0) + 1
        if request.stage is Stage.STT_INTERIM and request.coalesce_key is not None:
            self._waiting_interim[request.coalesce_key] = request.request_id
        return replaced

    def _coalescing_victim(self, request: Request) -> str | None:
        # Only the newest audio matters: a newer interim, or a final, of the same stream makes a
        # still-waiting interim useless. A running one is left alone (its result is on the way).
        if not self.config.coalesce_interims or request.coalesce_key is None:
            return None
        if request.stage not in (Stage.STT_INTERIM, Stage.STT_FINAL):
            return None
        victim = self._waiting_interim.get(request.coalesce_key)
        if victim is None or self._live[victim].status is not RequestStatus.WAITING:
            return None
        return victim

    def abort(self, request_id: str) -> bool:
        """Cancel a request. Waiting ones are dropped now; one holding a slot between steps is
        dropped now and its id comes back in the next batch's ``release_ids``; one inside the
        running step is cancelled when the step is reported (its output is discarded). Returns
        False for an unknown or already finished request (aborting twice is harmless)."""
        req = self._live.get(request_id)
        if req is None:
            return False
        if req.status is RequestStatus.RUNNING:
            self._abort_in_step.add(request_id)
        else:
            if req.status is RequestStatus.STREAMING:
                self._release.append(request_id)
            self._finish(req, RequestStatus.CANCELLED)
        return True

    def abort_call(self, call_id: str) -> list[str]:
        """Cancel every request of a call (the caller hung up). Returns the ids aborted."""
        ids = [rid for rid, r in self._live.items() if r.call_id == call_id]
        for rid in ids:
            self.abort(rid)
        return ids

    # -- the step function -------------------------------------------------------------------

    def schedule(self, now: float) -> Batch:
        """Pick the requests of the next engine step. Pure with respect to the outside world."""
        if self._in_flight is not None:
            raise SchedulerError(
                f"step {self._in_flight.step} is still running: report it with "
                "update_from_output() before scheduling the next one"
            )
        chosen = self._select(now) if self._live else []
        new_ids = frozenset(r.request_id for r in chosen if r.status is RequestStatus.WAITING)
        for r in chosen:
            if r.status is RequestStatus.WAITING:
                self._leave_waiting(r)
            if r.stage is Stage.STT_INTERIM and r.coalesce_key is not None:
                if self._waiting_interim.get(r.coalesce_key) == r.request_id:
                    del self._waiting_interim[r.coalesce_key]
            r.status = RequestStatus.RUNNING
        units = sum(r.units for r in chosen)
        predicted = self.cost_model.predict(len(chosen), units) if chosen else 0.0
        batch = Batch(
            step=self._step,
            requests=tuple(chosen),
            new_ids=new_ids,
            release_ids=tuple(self._release),
            predicted_step_s=predicted,
            scheduled_at=now,
            units=units,
        )
        self._release.clear()
        if chosen:
            self._in_flight = batch
            self._step += 1
        return batch

    def update_from_output(
        self, batch: Batch, outputs: Iterable[StepOutput], step_s: float, now: float
    ) -> StepResult:
        """Apply the engine's report of ``batch`` measured at ``step_s`` seconds, ending at ``now``.

        Every request of the batch needs exactly one output; one without is FAILED (nothing is
        lost silently). Raises :class:`SchedulerError` (changing nothing) for a stale batch or
        outputs that do not fit it.
        """
        if batch is not self._in_flight:
            raise SchedulerError(f"batch of step {batch.step} is not the step in flight")
        if not (math.isfinite(step_s) and step_s >= 0):
            raise SchedulerError(f"step {batch.step}: step time must be >= 0, got {step_s}")
        by_id = self._validate_outputs(batch, outputs)
        self._in_flight = None
        self.cost_model.observe(batch.size, batch.units, step_s)
        self._work.add(now, batch.units)
        self.last_batch_size, self.last_step_s = batch.size, step_s
        finished: list[str] = []
        streaming: list[str] = []
        failed: list[str] = []
        cancelled: list[str] = []
        late: list[str] = []
        for req in batch.requests:
            rid = req.request_id
            req.steps += 1
            out = by_id.get(rid)
            if rid in self._abort_in_step:
                self._abort_in_step.discard(rid)
                self._finish(req, RequestStatus.CANCELLED)
                cancelled.append(rid)
            elif out is None or out.error is not None:
                req.error = out.error if out is not None else "engine reported no output"
                self._finish(req, RequestStatus.FAILED)
                failed.append(rid)
            elif out.done:
                if self._complete_stage(req, now):
                    late.append(rid)
                self._finish(req, RequestStatus.FINISHED)
                finished.append(rid)
            else:
                if out.next_stage is not None and self._complete_stage(req, now):
                    late.append(rid)
                self._continue(req, out, now)
                streaming.append(rid)
        return StepResult(
            tuple(finished), tuple(streaming), tuple(failed), tuple(cancelled), tuple(late)
        )

    def _validate_outputs(
        self, batch: Batch, outputs: Iterable[StepOutput]
    ) -> dict[str, StepOutput]:
        in_batch = {r.request_id: r for r in batch.requests}
        by_id: dict[str, StepOutput] = {}
        for out in outputs:
            if out.request_id not in in_batch:
                raise SchedulerError(f"output for {out.request_id}, which is not in this batch")
            if out.request_id in by_id:
                raise SchedulerError(f"two outputs for {out.request_id}")
            if out.units is not None and not (math.isfinite(out.units) and out.units >= 0):
                raise SchedulerError(f"output for {out.request_id}: bad units {out.units}")
            if out.next_stage is not None:
                if out.next_stage.engine is not self.engine or out.next_stage.critical:
                    raise SchedulerError(
                        f"output for {out.request_id}: cannot move to stage {out.next_stage}"
                    )
                if out.slack_s is None:
                    raise SchedulerError(
                        f"output for {out.request_id}: next_stage needs slack_s (playout time)"
                    )
            if out.slack_s is not None:
                stage = out.next_stage or in_batch[out.request_id].stage
                if stage.critical:
                    raise SchedulerError(
                        f"output for {out.request_id}: a critical stage keeps its turn deadline"
                    )
                if not (math.isfinite(out.slack_s) and out.slack_s >= 0):
                    raise SchedulerError(f"output for {out.request_id}: bad slack {out.slack_s}")
            by_id[out.request_id] = out
        return by_id

    def _complete_stage(self, req: Request, now: float) -> bool:
        """Record the end of the request's current stage; True when it was late."""
        req.stage_done_at = now
        if now > req.deadline:
            self._misses[req.stage] = self._misses.get(req.stage, 0) + 1
            return True
        return False

    def _continue(self, req: Request, out: StepOutput, now: float) -> None:
        req.status = RequestStatus.STREAMING
        req.ready_since = now
        if out.units is not None:
            req.units = out.units
        if out.next_stage is not None:
            req.stage = out.next_stage
            req.stage_done_at = None
        if out.slack_s is not None:
            req.deadline = now + out.slack_s

    def _leave_waiting(self, req: Request) -> None:
        self._n_waiting -= 1
        left = self._waiting_per_call[req.call_id] - 1
        if left:
            self._waiting_per_call[req.call_id] = left
        else:
            del self._waiting_per_call[req.call_id]

    def _finish(self, req: Request, status: RequestStatus) -> None:
        if req.status is RequestStatus.WAITING:
            self._leave_waiting(req)
        req.status = status
        del self._live[req.request_id]
        self._order.pop(req.request_id, None)
        key = req.coalesce_key
        if key is not None and self._waiting_interim.get(key) == req.request_id:
            del self._waiting_interim[key]
        if status is RequestStatus.FINISHED:
            self.finished += 1
        elif status is RequestStatus.FAILED:
            self.failed += 1
        else:
            self.cancelled += 1

    def _select(self, now: float) -> list[Request]:
        raise NotImplementedError

    # -- observation -------------------------------------------------------------------------

    def get(self, request_id: str) -> Request | None:
        """The live request with this id, or None once it is done."""
        return self._live.get(request_id)

    @property
    def num_waiting(self) -> int:
        """Requests waiting for their first step."""
        return self._n_waiting

    @property
    def num_active(self) -> int:
        """Requests holding an engine slot (in the step, or streaming between steps)."""
        return sum(1 for r in self._live.values() if r.holds_slot)

    @property
    def deadline_misses(self) -> int:
        """Stages completed after their deadline, since start."""
        return sum(self._misses.values())

    def stats(self, now: float) -> EngineStats:
        """An immutable snapshot for admission control and metrics."""
        return EngineStats(
            engine=self.engine,
            mode=self.mode,
            waiting=self.num_waiting,
            active=self.num_active,
            max_waiting=self.config.max_waiting,
            slots=self._slots,
            steps=self._step,
            finished=self.finished,
            failed=self.failed,
            cancelled=self.cancelled,
            coalesced=self.coalesced,
            refused=self.refused,
            deadline_misses=self.deadline_misses,
            misses_by_stage=tuple(sorted(self._misses.items())),
            last_batch_size=self.last_batch_size,
            last_step_s=self.last_step_s,
            capacity_units_per_s=self.cost_model.capacity_units_per_s(self._batch_limit),
            work_units_per_s=self._work.per_second(now),
            load_window_s=self.config.load_window_s,
            at=now,
        )

    @property
    def _slots(self) -> int:
        return self.config.slots

    @property
    def _batch_limit(self) -> int:
        return self.config.max_batch
