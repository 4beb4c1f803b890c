"""Prometheus counters of what the no-dead-air machinery did (docs/reliability.md).

Recorded in job processes (faults, fallback messages, recoveries, busy calls) and in the
worker's main process (re-dispatches, lost helpers); the worker serves them in multiprocess mode
like the turn histograms (:mod:`worker.agent.metrics_export`). Made lazily, on first use: see
:func:`worker.agent.turn_metrics.default_recorder` for why.
"""

from __future__ import annotations

import functools
from dataclasses import dataclass

from prometheus_client import Counter

__all__ = ["FaultMetrics", "fault_metrics"]


@dataclass(frozen=True)
class FaultMetrics:
    faults: Counter
    """Call faults by the failing plugin (stt, llm, tts)."""
    messages: Counter
    """Fallback messages played, by message."""
    outcomes: Counter
    """How calls hit by a fault went on: recovered, ended, transferred."""
    redispatched: Counter
    """Calls whose job process died and which the worker dispatched again."""
    refused: Counter
    """Calls beyond the inference server's capacity, by action (busy_message, reject)."""


@functools.cache
def fault_metrics() -> FaultMetrics:
    """The process-wide counters on the default registry."""
    return FaultMetrics(
        faults=Counter("voicestack_agent_call_faults", "Call faults by failing plugin", ["source"]),
        messages=Counter(
            "voicestack_agent_fallback_messages", "Fallback messages played", ["message"]
        ),
        outcomes=Counter(
            "voicestack_agent_fault_outcomes", "Calls after a fault, by outcome", ["outcome"]
        ),
        redispatched=Counter(
            "voicestack_agent_calls_redispatched", "Calls re-dispatched after their job died"
        ),
        refused=Counter(
            "voicestack_agent_calls_over_capacity", "Calls beyond capacity, by action", ["action"]
        ),
    )
