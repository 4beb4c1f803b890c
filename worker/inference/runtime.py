"""Engine owner threads: the only place where a model is touched.

Each :class:`EngineRunner` owns one engine (loaded inside its thread, so a slow load never blocks
the event loop) and a bounded set of waiting :class:`Work` items. The asyncio side submits work
and awaits its events; the thread hands results back with ``loop.call_soon_threadsafe``.

Which waiting item runs next is decided by one replaceable object, the :class:`WorkPolicy`
(:class:`FifoPolicy` here: serial, critical work first, FIFO within a class). The batching
scheduler (``worker/inference/scheduler``) plugs in at that seam. Work has explicit states; a
cancelled item is dropped while it waits and stopped by its executor (e.g. at the next LLM
token) while it runs.
"""

from __future__ import annotations

import asyncio
import collections
import enum
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Generic, Protocol, TypeVar

from worker.inference.owner_thread import EngineLoadError, OwnerThread

__all__ = [
    "EngineLoadError",
    "EngineNotReady",
    "EngineRunner",
    "FifoPolicy",
    "Overloaded",
    "Partial",
    "RunnerObserver",
    "Terminal",
    "Work",
    "WorkContext",
    "WorkPolicy",
    "WorkState",
]

log = logging.getLogger(__name__)

E = TypeVar("E")  # engine
P = TypeVar("P")  # request payload
R = TypeVar("R")  # result


class WorkState(enum.IntEnum):
    """Life cycle of one work item."""

    WAITING = 0
    RUNNING = 1
    FINISHED = 2
    CANCELLED = 3
    FAILED = 4

    @property
    def is_done(self) -> bool:
        return self >= WorkState.FINISHED


class Overloaded(RuntimeError):
    """The engine's queue is full: refuse the request rather than queue without bound."""


class EngineNotReady(RuntimeError):
    """The engine has not loaded its model (yet), or its load failed."""


@dataclass(frozen=True)
class Partial(Generic[R]):
    """A streamed piece of a result (an LLM token)."""

    value: Any


@dataclass(frozen=True)
class Terminal(Generic[R]):
    """The last event of a work item."""

    state: WorkState
    result: R | None = None
    error: BaseException | None = None


class WorkContext:
    """What an executor sees of its work item, in the engine thread."""

    def __init__(self, work: Work[Any, Any]) -> None:
        self._work = work

    def cancelled(self) -> bool:
        """True once the client cancelled; executors check it at every step (token)."""
        return self._work.cancel_requested

    def emit(self, value: Any) -> None:
        """Stream a partial result to the awaiting coroutine."""
        self._work._post_partial(value)


@dataclass(eq=False)
class Work(Generic[P, R]):
    """One unit of engine work with an explicit state. Created by :meth:`EngineRunner.submit`."""

    payload: P
    stream_id: str
    critical: bool
    max_partials: int
    loop: asyncio.AbstractEventLoop
    id: int = 0
    state: WorkState = WorkState.WAITING
    enqueued_at: float = field(default_factory=time.monotonic)
    started_at: float | None = None
    finished_at: float | None = None
    _cancel: threading.Event = field(default_factory=threading.Event)
    # Bounded: at most max_partials partials plus the one terminal event.
    _events: asyncio.Queue[Partial[R] | Terminal[R]] = field(init=False)
    _partials_posted: int = 0
    _runner: _Aborter | None = None

    def __post_init__(self) -> None:
        self._events = asyncio.Queue(maxsize=self.max_partials + 1)

    @property
    def cancel_requested(self) -> bool:
        return self._cancel.is_set()

    def cancel(self) -> None:
        """Ask the engine to stop this work: a waiting item is dropped now, a running one at its
        executor's next check. Idempotent; safe after completion."""
        self._cancel.set()
        if self._runner is not None:
            self._runner._abort(self)

    async def next_event(self) -> Partial[R] | Terminal[R]:
        """The next partial or the terminal event."""
        return await self._events.get()

    async def wait(self) -> Terminal[R]:
        """Await the terminal event, discarding partials."""
        while True:
            event = await self._events.get()
            if isinstance(event, Terminal):
                return event

    # -- engine-thread side -------------------------------------------------------------------
    def _post_partial(self, value: Any) -> None:
        if self._partials_posted >= self.max_partials:
            # The executor produced more than announced: stop it rather than grow a queue.
            log.warning(
                "work %d produced more than %d partials; cancelling", self.id, self.max_partials
            )
            self._cancel.set()
            return
        self._partials_posted += 1
        self._post(Partial(value))

    def _post(self, event: Partial[R] | Terminal[R]) -> None:
        try:
            self.loop.call_soon_threadsafe(self._events.put_nowait, event)
        except RuntimeError:  # the loop is closed: nobody is waiting any more
            pass


class _Aborter(Protocol):
    def _abort(self, work: Work[Any, Any]) -> None: ...


class WorkPolicy(Protocol):
    """Decides which waiting work item an engine runs next. Called under the runner's lock."""

    def add(self, work: Work[Any, Any]) -> None: ...

    def remove(self, work: Work[Any, Any]) -> bool:
        """Drop a waiting item; False if it is not waiting here."""
        ...

    def pick(self) -> Work[Any, Any] | None: ...

    def __len__(self) -> int: ...


class FifoPolicy:
    """Serial execution: critical work (finals, first tokens) before slack work (interims),
    first come first served within each class."""

    def __init__(self) -> None:
        self._critical: collections.deque[Work[Any, Any]] = collections.deque()
        self._slack: collections.deque[Work[Any, Any]] = collections.deque()

    def add(self, work: Work[Any, Any]) -> None:
        (self._critical if work.critical else self._slack).append(work)

    def remove(self, work: Work[Any, Any]) -> bool:
        queue = self._critical if work.critical else self._slack
        try:
            queue.remove(work)
        except ValueError:
            return False
        return True

    def pick(self) -> Work[Any, Any] | None:
        if self._critical:
            return self._critical.popleft()
        if self._slack:
            return self._slack.popleft()
        return None

    def __len__(self) -> int:
        return len(self._critical) + len(self._slack)


class RunnerObserver(Protocol):
    """Metrics hooks; called from the engine thread or the loop (implementations are
    thread-safe, like prometheus_client)."""

    def queue_depth(self, engine: str, depth: int) -> None: ...

    def work_done(self, engine: str, state: WorkState, wait_s: float, run_s: float) -> None: ...


class EngineRunner(OwnerThread[E], Generic[E, P, R]):
    """One owner thread per engine.

    ``load`` builds the engine inside the thread; ``execute(engine, payload, ctx)`` computes one
    item there and may stream partials with ``ctx.emit``. Exceptions from ``execute`` fail that
    item only.
    """

    def __init__(
        self,
        name: str,
        load: Callable[[], E],
        execute: Callable[[E, P, WorkContext], R],
        *,
        max_queue: int,
        policy: WorkPolicy | None = None,
        observer: RunnerObserver | None = None,
    ) -> None:
        super().__init__(name, load)
        self._execute = execute
        self._max_queue = max_queue
        self._policy: WorkPolicy = policy if policy is not None else FifoPolicy()
        self._observer = observer
        self._running: Work[P, R] | None = None

    # -- lifecycle (start, ready, load_error, wait_loaded: OwnerThread) -------------------------
    def stop(self, timeout: float = 10.0) -> None:
        """Cancel everything, let the running item stop, and join the thread."""
        with self._cond:
            self._stopping = True
            if self._running is not None:
                self._running._cancel.set()
            self._cond.notify_all()
        self._join(timeout)

    # -- state for capacity and tests -----------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        with self._cond:
            return len(self._policy)

    @property
    def busy(self) -> bool:
        with self._cond:
            return self._running is not None

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
        """Queue work; raise :class:`Overloaded` at capacity, :class:`EngineNotReady` before load.

        Must be called from the event loop that will await the work's events. The serial
        runner ignores the scheduling fields (``call_id`` .. ``coalesce_key``): it has no
        deadlines; they exist so that streams submit the same way in both modes.
        """
        del call_id, stage, deadline, units, coalesce_key, turn_end
        if not self.ready:
            raise EngineNotReady(f"{self.name} engine is not ready")
        work: Work[P, R] = Work(
            payload=payload,
            stream_id=stream_id,
            critical=critical,
            max_partials=max_partials,
            loop=asyncio.get_running_loop(),
        )
        work._runner = self
        with self._cond:
            if self._stopping:
                raise EngineNotReady(f"{self.name} engine is shutting down")
            if len(self._policy) >= self._max_queue:
                raise Overloaded(f"{self.name} engine queue is full ({self._max_queue} waiting)")
            work.id = next(self._ids)
            self._policy.add(work)
            depth = len(self._policy)
            self._cond.notify()
        self._observe_depth(depth)
        return work

    def _abort(self, work: Work[Any, Any]) -> None:
        with self._cond:
            if work.state != WorkState.WAITING or not self._policy.remove(work):
                return  # running (its executor sees the flag) or already done
            depth = len(self._policy)
        self._observe_depth(depth)
        self._finish(work, Terminal(WorkState.CANCELLED))

    # -- engine thread --------------------------------------------------------------------------
    def _serve(self, engine: E) -> None:
        while True:
            with self._cond:
                while not self._stopping and len(self._policy) == 0:
                    self._cond.wait()
                if self._stopping:
                    break
                work = self._policy.pick()
                if work is None:
                    continue
                work.state = WorkState.RUNNING
                work.started_at = time.monotonic()
                self._running = work
                depth = len(self._policy)
            self._observe_depth(depth)
            try:
                self._run_one(engine, work)
            finally:
                with self._cond:
                    self._running = None
        self._drain()

    def _run_one(self, engine: E, work: Work[P, R]) -> None:
        if work.cancel_requested:
            self._finish(work, Terminal(WorkState.CANCELLED))
            return
        try:
            result = self._execute(engine, work.payload, WorkContext(work))
        except Exception as err:
            log.exception(
                "%s engine failed on work %d (stream %s)", self.name, work.id, work.stream_id
            )
            self._finish(work, Terminal(WorkState.FAILED, error=err))
            return
        # An executor that noticed the cancel flag still returns what it has (e.g. usage).
        state = WorkState.CANCELLED if work.cancel_requested else WorkState.FINISHED
        self._finish(work, Terminal(state, result=result))

    def _drain(self) -> None:
        with self._cond:
            waiting = []
            while (work := self._policy.pick()) is not None:
                waiting.append(work)
        for work in waiting:
            self._finish(work, Terminal(WorkState.CANCELLED))
        self._observe_depth(0)

    def _finish(self, work: Work[P, R], event: Terminal[R]) -> None:
        work.state = event.state
        work.finished_at = time.monotonic()
        if self._observer is not None:
            start = work.started_at if work.started_at is not None else work.finished_at
            self._observer.work_done(
                self.name, event.state, start - work.enqueued_at, work.finished_at - start
            )
        work._post(event)

    def _observe_depth(self, depth: int) -> None:
        if self._observer is not None:
            self._observer.queue_depth(self.name, depth)
