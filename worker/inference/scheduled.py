"""Engine owner threads driven by the deadline scheduler (``scheduler.mode: deadline``).

A :class:`ScheduledRunner` owns one batched engine (a :class:`StepEngine`) and its scheduler
(``worker/inference/scheduler``). The event loop never touches either: :meth:`submit` puts the
new work into a bounded inbox and :meth:`Work.cancel` puts an abort there; the owner thread
applies both between engine steps, exactly as docs/scheduler.md prescribes::

    apply inbox (add_request / abort) -> schedule(now) -> release(batch.release_ids)
    -> engine.step(batch) -> update_from_output -> release(cancelled) -> answer the streams

Results and partials go back to the awaiting coroutines with ``loop.call_soon_threadsafe`` (the
:class:`~worker.inference.runtime.Work` plumbing); every scheduler snapshot (``EngineStats``) is
handed to ``on_stats`` for admission control and metrics.
"""

from __future__ import annotations

import asyncio
import logging
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, Generic, Protocol, TypeVar

from worker.inference.faults import FaultInjector
from worker.inference.owner_thread import OwnerThread
from worker.inference.runtime import (
    EngineNotReady,
    Overloaded,
    Terminal,
    Work,
    WorkState,
)
from worker.inference.scheduler import (
    BaseScheduler,
    CallClock,
    EngineStats,
    Request,
    RequestStatus,
    SchedulerError,
    SchedulerFullError,
    Stage,
    StepOutput,
)

__all__ = ["ScheduledRunner", "StepEngine", "StepItem"]

log = logging.getLogger(__name__)

P = TypeVar("P")
R = TypeVar("R")


@dataclass(eq=False)
class StepItem(Generic[P, R]):
    """One scheduled request and the work item whose stream awaits it."""

    request: Request
    work: Work[P, R]

    @property
    def rid(self) -> str:
        return self.request.request_id


class StepEngine(Protocol):
    """A batched engine as the owner thread drives it; every method runs on that thread."""

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        """Run one engine step over ``items`` (most urgent first; new ones need allocation),
        stream partials with ``item.work._post_partial`` and return one output per item."""
        ...

    def result(self, rid: str) -> Any:
        """The terminal result of a request that finished or was cancelled (may be None)."""
        ...

    def release(self, rid: str) -> None:
        """Free every engine resource of ``rid`` (unknown ids are ignored)."""
        ...


class ScheduledRunner(OwnerThread[StepEngine], Generic[P, R]):
    """One owner thread, one scheduler, one batched engine.

    ``load`` builds the engine inside the thread (a slow load never blocks the event loop).
    ``max_inbox`` bounds the commands not yet applied; together with the scheduler's own
    ``max_waiting`` every queue is bounded, and :meth:`submit` refuses with :class:`Overloaded`
    at once beyond them.
    """

    def __init__(
        self,
        name: str,
        load: Callable[[], StepEngine],
        scheduler: BaseScheduler,
        clock: CallClock,
        *,
        max_inbox: int,
        on_stats: Callable[[EngineStats], None] | None = None,
        on_work_done: Callable[[str, WorkState, float, float], None] | None = None,
        faults: FaultInjector | None = None,
        stuck_step_s: float = 10.0,
        failed_steps_unready: int = 3,
    ) -> None:
        super().__init__(name, load)
        self._faults = faults
        self._stuck_step_s = stuck_step_s
        self._failed_steps_unready = failed_steps_unready
        # Written by the owner thread, read by readiness on the loop (plain attribute stores).
        self._step_started: float | None = None
        self._failed_steps = 0  # consecutive steps that raised
        self._sched = scheduler
        self._clock = clock  # event-loop state: only touched in submit()
        self._max_inbox = max_inbox
        self._on_stats = on_stats
        self._on_work_done = on_work_done
        self._inbox: list[StepItem[P, R]] = []
        self._aborts: list[Work[Any, Any]] = []
        # Owner-thread state: request id -> item of every request the scheduler holds.
        self._live: dict[str, StepItem[P, R]] = {}
        self._waiting_estimate = 0  # scheduler waiting count as of the last iteration
        self._active = 0  # requests holding an engine slot, as of the last iteration

    # -- lifecycle (start, ready, load_error, wait_loaded: OwnerThread) -------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Stop after the running step; every unfinished work item ends CANCELLED."""
        with self._cond:
            self._stopping = True
            self._cond.notify_all()
        self._join(timeout)

    def _serving_problem(self) -> str | None:
        started = self._step_started
        if started is not None and time.monotonic() - started > self._stuck_step_s:
            return f"stuck in one step for {time.monotonic() - started:.0f} s"
        if self._failed_steps >= self._failed_steps_unready:
            return f"the last {self._failed_steps} steps failed"
        return None

    # -- state for capacity and tests -----------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Requests waiting (inbox plus the scheduler's queue, as of its last iteration)."""
        with self._cond:
            return len(self._inbox) + self._waiting_estimate

    @property
    def busy(self) -> bool:
        """True while some request holds an engine slot."""
        with self._cond:
            return self._active > 0

    # -- asyncio side ---------------------------------------------------------------------------
    def submit(
        self,
        payload: P,
        *,
        stream_id: str,
        critical: bool = True,
        max_partials: int = 0,
        call_id: str | None = None,
        stage: object = None,
        deadline: float | None = None,
        units: float = 1.0,
        coalesce_key: str | None = None,
        turn_end: float | None = None,
    ) -> Work[P, R]:
        """Queue work for the scheduler; ``stage`` (not ``critical``) sets its priority.

        ``deadline`` is absolute on ``time.monotonic()``; ``None`` takes the call clock's
        deadline for ``stage`` now. ``turn_end`` (a final transcript's flush time) records the
        caller's end of turn first, so this and the call's later critical work count from it.
        Must be called on the event loop. Raises :class:`Overloaded` when the queue is full,
        :class:`EngineNotReady` before the model is loaded.
        """
        if not self.ready:
            raise EngineNotReady(f"{self.name} engine is not ready")
        if self._faults is not None and self._faults.refuse_submit(self.name):
            raise Overloaded(f"{self.name} engine queue is full (injected fault)")
        if call_id is None or not isinstance(stage, Stage):
            raise ValueError("scheduled work needs a call_id and a Stage")
        now = time.monotonic()
        try:
            if turn_end is not None:
                self._clock.end_of_turn(call_id, turn_end)
            if deadline is None:
                deadline = self._clock.deadline(call_id, stage, now)
        except SchedulerFullError as err:
            raise Overloaded(str(err)) from None
        work: Work[P, R] = Work(
            payload=payload,
            stream_id=stream_id,
            critical=stage.critical,
            max_partials=max_partials,
            loop=asyncio.get_running_loop(),
        )
        with self._cond:
            if self._stopping:
                raise EngineNotReady(f"{self.name} engine is shutting down")
            limit = self._sched.config.max_waiting
            if len(self._inbox) >= self._max_inbox or (
                len(self._inbox) + self._waiting_estimate >= limit
            ):
                raise Overloaded(
                    f"{self.name} engine queue is full ({len(self._inbox)} new, "
                    f"{self._waiting_estimate} waiting; max_waiting={limit})"
                )
            work.id = next(self._ids)
            request = Request(
                request_id=f"{self.name}-{work.id}",
                call_id=call_id,
                stage=stage,
                arrival=now,
                deadline=deadline,
                units=units,
                coalesce_key=coalesce_key,
            )
            work._runner = self
            self._inbox.append(StepItem(request, work))
            self._cond.notify()
        return work

    def _abort(self, work: Work[Any, Any]) -> None:
        """Called by :meth:`Work.cancel` on any thread: the owner applies it between steps."""
        with self._cond:
            if work.state.is_done or self._stopping:
                return
            self._aborts.append(work)  # at most one per live work item: bounded
            self._cond.notify()

    # -- owner thread ---------------------------------------------------------------------------
    def _loaded_note(self) -> str:
        return f" (scheduler mode {self._sched.mode})"

    def _serve(self, engine: StepEngine) -> None:
        try:
            while self._iterate(engine):
                pass
        except BaseException as err:
            # The owner thread is dying: its work fails (the streams report an engine error at
            # once) rather than ending "cancelled", which a client would take as a normal end.
            self._drain(engine, died=err)
            raise
        self._drain(engine)

    def _iterate(self, engine: StepEngine) -> bool:
        sched = self._sched
        with self._cond:
            while (
                not self._stopping
                and not self._inbox
                and not self._aborts
                and sched.num_waiting == 0
                and sched.num_active == 0
            ):
                self._cond.wait()
            if self._stopping:
                return False
            new, self._inbox = self._inbox, []
            aborts, self._aborts = self._aborts, []
        now = time.monotonic()
        for item in new:
            self._add(item, now)
        for work in aborts:
            rid = f"{self.name}-{work.id}"
            aborted = self._live.get(rid)
            if aborted is None:
                continue
            req = sched.get(rid)
            was_waiting = req is not None and req.status is RequestStatus.WAITING
            sched.abort(rid)
            if was_waiting:
                # Dropped while waiting: it never touched the engine. A streaming one comes
                # back in the next batch's release_ids and is freed there.
                self._end(engine, aborted, WorkState.CANCELLED, release=False)
        batch = sched.schedule(now)
        for rid in batch.release_ids:
            released = self._live.get(rid)
            if released is not None:
                self._end(engine, released, WorkState.CANCELLED)
            else:
                engine.release(rid)
        if batch:
            items = [self._live[r.request_id] for r in batch.requests]
            for item in items:
                if item.rid in batch.new_ids:
                    item.work.state = WorkState.RUNNING
                    item.work.started_at = now
            t0 = time.monotonic()
            self._step_started = t0
            try:
                if self._faults is not None:
                    self._faults.before_step(self.name)
                outputs = engine.step(items)
                self._failed_steps = 0
            except Exception as err:
                log.exception("%s engine step failed (%d requests)", self.name, len(items))
                self._failed_steps += 1
                outputs = [StepOutput(it.rid, error=f"{type(err).__name__}: {err}") for it in items]
            finally:
                self._step_started = None
            end = time.monotonic()
            result = sched.update_from_output(batch, outputs, end - t0, end)
            errors = {o.request_id: o.error for o in outputs if o.error is not None}
            for rid in result.cancelled:
                self._end(engine, self._live[rid], WorkState.CANCELLED)
            for rid in result.finished:
                self._end(engine, self._live[rid], WorkState.FINISHED)
            for rid in result.failed:
                err_text = errors.get(rid) or "engine reported no output"
                self._end(engine, self._live[rid], WorkState.FAILED, error=RuntimeError(err_text))
            now = end
        with self._cond:
            self._waiting_estimate = sched.num_waiting
            self._active = sched.num_active
        if self._on_stats is not None:
            self._on_stats(sched.stats(now))
        return True

    def _add(self, item: StepItem[P, R], now: float) -> None:
        if item.work.cancel_requested:
            self._finish(item, Terminal(WorkState.CANCELLED))
            return
        try:
            replaced = self._sched.add_request(item.request, now)
        except SchedulerFullError as err:
            self._finish(item, Terminal(WorkState.FAILED, error=Overloaded(str(err))))
            return
        except SchedulerError as err:
            self._finish(item, Terminal(WorkState.FAILED, error=err))
            return
        self._live[item.rid] = item
        if replaced is not None and replaced in self._live:
            # A newer interim of the same stream made the waiting one useless.
            self._finish(self._live.pop(replaced), Terminal(WorkState.CANCELLED))

    def _end(
        self,
        engine: StepEngine,
        item: StepItem[P, R],
        state: WorkState,
        *,
        error: BaseException | None = None,
        release: bool = True,
    ) -> None:
        self._live.pop(item.rid, None)
        result = None
        if release:
            try:
                if state != WorkState.FAILED:
                    result = engine.result(item.rid)
            finally:
                engine.release(item.rid)  # the slot is free before the next step
        if state == WorkState.FINISHED and item.work.cancel_requested:
            state = WorkState.CANCELLED
        self._finish(item, Terminal(state, result=result, error=error))

    def _finish(self, item: StepItem[P, R], event: Terminal[R]) -> None:
        work = item.work
        work.state = event.state
        work.finished_at = time.monotonic()
        if self._on_work_done is not None:
            req = item.request
            started = req.arrival if work.started_at is None else work.started_at
            self._on_work_done(
                self.name, event.state, started - req.arrival, work.finished_at - started
            )
        work._post(event)

    def _drain(self, engine: StepEngine | None = None, died: BaseException | None = None) -> None:
        end: Terminal[R] = Terminal(WorkState.CANCELLED)
        if died is not None:
            err = RuntimeError(f"{self.name} engine owner thread died: {died}")
            end = Terminal(WorkState.FAILED, error=err)
        with self._cond:
            new, self._inbox = self._inbox, []
            self._aborts = []
            self._waiting_estimate = self._active = 0
        for item in new:
            self._finish(item, end)
        for item in list(self._live.values()):
            self._live.pop(item.rid, None)
            if engine is not None:
                try:
                    engine.release(item.rid)
                except Exception:  # shutting down: nothing else to free it for
                    log.exception("%s: releasing %s at shutdown failed", self.name, item.rid)
            self._finish(item, end)
