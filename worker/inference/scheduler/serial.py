"""The serial baseline: one request at a time per engine, first come first served.

This is how peers serve local models (a lock around the model, requests in arrival order, no
batching, no deadlines). It exists to be measured against the deadline scheduler in the same
run; select it with ``mode: serial`` in :class:`~.config.SchedulingConfig`. Same interface and
bookkeeping as :class:`~.core.Scheduler` (bounded queues, aborts between steps, interim
coalescing unless ``coalesce_interims: false``); deadlines are still recorded so that misses can
be compared, but they never influence the order.
"""

from __future__ import annotations

from typing import Literal

from .base import BaseScheduler, SchedulerConfig
from .core import Scheduler
from .cost_model import CostModel
from .request import Engine, Request, RequestStatus

__all__ = ["Mode", "SerialPolicy", "make_scheduler"]

Mode = Literal["deadline", "serial"]


class SerialPolicy(BaseScheduler):
    """FIFO, batch size 1, one active request: a streaming request runs to its end first."""

    mode = "serial"

    def _select(self, now: float) -> list[Request]:
        streaming = [r for r in self._live.values() if r.status is RequestStatus.STREAMING]
        pool = streaming or [r for r in self._live.values() if r.status is RequestStatus.WAITING]
        if not pool:
            return []
        return [min(pool, key=lambda r: self._order[r.request_id])]

    @property
    def _slots(self) -> int:
        return 1

    @property
    def _batch_limit(self) -> int:
        return 1


def make_scheduler(
    engine: Engine,
    config: SchedulerConfig | None = None,
    mode: Mode = "deadline",
    cost_model: CostModel | None = None,
) -> BaseScheduler:
    """The scheduler of ``engine`` for ``mode``: :class:`Scheduler` or :class:`SerialPolicy`."""
    if mode == "serial":
        return SerialPolicy(engine, config, cost_model)
    if mode == "deadline":
        return Scheduler(engine, config, cost_model)
    raise ValueError(f"unknown scheduling mode {mode!r}: expected 'deadline' or 'serial'")
