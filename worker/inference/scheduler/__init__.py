"""Scheduling core of the inference server: pure, deterministic, no I/O, no threads, no models.

One scheduler per engine (:func:`make_scheduler`), driven by that engine's owner thread through
``add_request`` / ``abort`` / ``schedule(now)`` / ``update_from_output(...)``; deadlines from the
call's turn (:class:`CallClock`); an online cost model per engine (:class:`CostModel`); admission
control on the event loop (:class:`AdmissionController`). See docs/scheduler.md.
"""

from .admission import AdmissionConfig, AdmissionController, Decision
from .base import BaseScheduler, EngineStats, SchedulerConfig
from .config import SchedulingConfig
from .core import Scheduler
from .cost_model import CostModel, CostModelConfig
from .deadlines import CallClock, DeadlineConfig
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
from .serial import Mode, SerialPolicy, make_scheduler

__all__ = [
    "AdmissionConfig",
    "AdmissionController",
    "BaseScheduler",
    "Batch",
    "CallClock",
    "CostModel",
    "CostModelConfig",
    "DeadlineConfig",
    "Decision",
    "Engine",
    "EngineStats",
    "Mode",
    "Request",
    "RequestStatus",
    "Scheduler",
    "SchedulerConfig",
    "SchedulerError",
    "SchedulerFullError",
    "SchedulingConfig",
    "SerialPolicy",
    "Stage",
    "StepOutput",
    "StepResult",
    "make_scheduler",
]
