"""Request states and the messages exchanged between a scheduler and its engine owner thread.

A :class:`Request` is one unit of engine work for one call: an interim or final transcription,
an LLM generation, one TTS clause. Its :class:`RequestStatus` moves only forward::

    WAITING --schedule()--> RUNNING --update_from_output()--> FINISHED | FAILED
                               |  ^                     \\--> STREAMING (more steps to run)
                               |  \\-------schedule()-------------/
                               \\--abort()--> CANCELLED (output of the in-flight step is dropped)

``STREAMING`` is a request that has produced output and holds its engine slot (e.g. an LLM
sequence's KV cells) while it waits for its next step. Everything here is plain data: no I/O,
no clock reads, no locks.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from enum import IntEnum, StrEnum

__all__ = [
    "Batch",
    "Engine",
    "Request",
    "RequestStatus",
    "SchedulerError",
    "SchedulerFullError",
    "Stage",
    "StepOutput",
    "StepResult",
]


class SchedulerError(ValueError):
    """The caller broke the scheduler contract (unknown request, stale batch, bad output)."""


class SchedulerFullError(RuntimeError):
    """A request was refused at once because a bounded queue is full. The message says which."""


class RequestStatus(IntEnum):
    """Lifecycle of a request; values at or above ``FINISHED`` are terminal."""

    WAITING = 0
    RUNNING = 1
    STREAMING = 2
    FINISHED = 3
    CANCELLED = 4
    FAILED = 5

    @property
    def is_done(self) -> bool:
        """True for FINISHED, CANCELLED and FAILED."""
        return self >= RequestStatus.FINISHED


class Engine(StrEnum):
    """The three engines of the inference server; each has its own scheduler."""

    STT = "stt"
    LLM = "llm"
    TTS = "tts"


class Stage(StrEnum):
    """Where a request sits on a call's turn. Critical stages are on the voice-to-voice path."""

    STT_INTERIM = "stt_interim"
    STT_FINAL = "stt_final"
    LLM_FIRST_CLAUSE = "llm_first_clause"  # prefill plus tokens up to the first clause end
    LLM_REST = "llm_rest"
    TTS_FIRST = "tts_first"  # the first clause of an answer: the caller is waiting in silence
    TTS_REST = "tts_rest"

    @property
    def engine(self) -> Engine:
        """The engine that serves this stage."""
        return _STAGE_ENGINE[self]

    @property
    def critical(self) -> bool:
        """True when the caller is waiting in silence for this work to complete."""
        return self in _CRITICAL


_STAGE_ENGINE = {
    Stage.STT_INTERIM: Engine.STT,
    Stage.STT_FINAL: Engine.STT,
    Stage.LLM_FIRST_CLAUSE: Engine.LLM,
    Stage.LLM_REST: Engine.LLM,
    Stage.TTS_FIRST: Engine.TTS,
    Stage.TTS_REST: Engine.TTS,
}
_CRITICAL = frozenset({Stage.STT_FINAL, Stage.LLM_FIRST_CLAUSE, Stage.TTS_FIRST})


@dataclass(eq=False)
class Request:
    """One unit of engine work. The scheduler that accepted it is the only one mutating it.

    ``units`` is the work of the request's next step in the engine's own unit (audio seconds for
    STT, prompt or generated tokens for the LLM, characters for TTS); the cost model predicts step
    time from it. ``coalesce_key`` (the STT stream id) lets a newer interim replace an older
    waiting one. ``deadline`` is absolute, on the same clock as every ``now`` the caller passes.
    """

    request_id: str
    call_id: str
    stage: Stage
    arrival: float
    deadline: float
    units: float = 1.0
    coalesce_key: str | None = None
    status: RequestStatus = RequestStatus.WAITING
    # When the request last became ready to run (arrival, or the end of its previous step):
    # aging is measured from here so a long stream is not "old" forever.
    ready_since: float = field(default=0.0)
    steps: int = 0
    error: str | None = None
    # Set once when the current stage completes: the time, and whether it was after the deadline.
    stage_done_at: float | None = None

    def __post_init__(self) -> None:
        if not self.request_id:
            raise SchedulerError("request_id must be a non-empty string")
        if not self.call_id:
            raise SchedulerError(f"request {self.request_id}: call_id must be non-empty")
        if not (math.isfinite(self.units) and self.units >= 0):
            raise SchedulerError(f"request {self.request_id}: units must be >= 0, got {self.units}")
        if not (math.isfinite(self.arrival) and math.isfinite(self.deadline)):
            # A NaN deadline would silently break the ordering of every other request.
            raise SchedulerError(f"request {self.request_id}: arrival and deadline must be finite")
        if self.stage is Stage.STT_INTERIM and self.coalesce_key is None:
            # Without a key interims of one stream would pile up instead of coalescing.
            raise SchedulerError(f"request {self.request_id}: an interim needs a coalesce_key")
        self.ready_since = max(self.ready_since, self.arrival)

    @property
    def engine(self) -> Engine:
        """The engine that serves this request's stage."""
        return self.stage.engine

    @property
    def holds_slot(self) -> bool:
        """True while the request occupies an engine slot (in a step, or between stream steps)."""
        return self.status in (RequestStatus.RUNNING, RequestStatus.STREAMING)


@dataclass(frozen=True)
class Batch:
    """What :meth:`schedule` tells the engine to do in one step.

    ``requests`` run together in this step, most urgent first; ``new_ids`` are those running for
    the first time (the engine allocates their state: prefill, KV sequence). ``release_ids`` were
    cancelled since the last step while holding engine state: the engine must free it before
    running the step (e.g. ``llama_memory_seq_rm``). An empty batch with releases is valid.
    """

    step: int
    requests: tuple[Request, ...]
    new_ids: frozenset[str]
    release_ids: tuple[str, ...]
    predicted_step_s: float
    scheduled_at: float
    units: float  # total work units at scheduling time: the cost model's second input

    @property
    def size(self) -> int:
        """Number of requests run in this step."""
        return len(self.requests)

    def __bool__(self) -> bool:
        return bool(self.requests)


@dataclass(frozen=True)
class StepOutput:
    """The engine's report on one request after a step.

    ``done``: the request is complete. ``error``: it failed (the stream gets an ``internal``
    error; other requests are unaffected). Otherwise it streams on: ``units`` is the work of its
    next step (``None`` keeps the current value). ``next_stage`` moves it to a later stage (the
    LLM's first clause is out: it becomes ``llm_rest``) with deadline ``now + slack_s`` where
    ``slack_s`` is the playout time of audio already produced for the call.
    """

    request_id: str
    done: bool = False
    error: str | None = None
    units: float | None = None
    next_stage: Stage | None = None
    slack_s: float | None = None


@dataclass(frozen=True)
class StepResult:
    """What :meth:`update_from_output` concluded; the engine owner answers the streams from it.

    ``cancelled`` were aborted while in the step: their output must be dropped and their engine
    state freed. ``late`` completed a stage after its deadline (counted as deadline misses).
    """

    finished: tuple[str, ...]
    streaming: tuple[str, ...]
    failed: tuple[str, ...]
    cancelled: tuple[str, ...]
    late: tuple[str, ...]
