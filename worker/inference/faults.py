"""Fault injection for the reliability suite: make one engine fail the way engines fail.

Off unless the server was started with ``--fault-injection`` (never in production configs):
then ``POST /v1/faults`` arms one fault per engine, applied by that engine's owner thread (or,
for ``overload``, by its ``submit``), so the fault travels the same path a real one would:

- ``kill_owner``: the owner thread dies with an exception, as after a bug in an engine binding;
- ``fail_steps``: every step (or the next ``count``) raises, as an engine in a broken state;
- ``hang``: the next step blocks until the server stops, as a native deadlock;
- ``overload``: the next ``count`` submissions are refused as if the queue were full.

``DELETE /v1/faults`` disarms them all.
"""

from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Literal, get_args

__all__ = ["FAULT_KINDS", "FaultInjector", "InjectedFault", "OwnerThreadKilled"]

FaultKind = Literal["kill_owner", "fail_steps", "hang", "overload"]
FAULT_KINDS: tuple[str, ...] = get_args(FaultKind)


class InjectedFault(RuntimeError):
    """Raised in place of an engine step by ``fail_steps``."""


class OwnerThreadKilled(BaseException):
    """Raised out of the owner thread's loop by ``kill_owner``: a BaseException, so that no
    ``except Exception`` on the way catches it and the thread really dies."""


@dataclass
class _Armed:
    kind: FaultKind
    remaining: int  # -1: until disarmed


class FaultInjector:
    """Armed faults per engine name; thread-safe (armed on the loop, applied on owner threads)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._armed: dict[str, _Armed] = {}
        self._released = threading.Event()  # set on disarm/stop: releases hung steps

    def arm(self, engine: str, kind: str, count: int = -1) -> None:
        """Arm ``kind`` on ``engine`` for ``count`` occurrences (-1: until disarmed)."""
        if kind not in FAULT_KINDS:
            raise ValueError(f"unknown fault {kind!r} (one of {', '.join(FAULT_KINDS)})")
        if count == 0 or count < -1:
            raise ValueError("count must be positive, or -1 for until disarmed")
        with self._lock:
            self._armed[engine] = _Armed(kind, count)  # type: ignore[arg-type]
            self._released.clear()

    def disarm(self) -> None:
        """Disarm every fault and release hung steps."""
        with self._lock:
            self._armed.clear()
        self._released.set()

    def armed(self) -> dict[str, str]:
        """Engine name -> armed fault kind."""
        with self._lock:
            return {name: a.kind for name, a in self._armed.items()}

    def _take(self, engine: str, kinds: tuple[str, ...]) -> str | None:
        with self._lock:
            armed = self._armed.get(engine)
            if armed is None or armed.kind not in kinds:
                return None
            if armed.remaining > 0:
                armed.remaining -= 1
                if armed.remaining == 0:
                    del self._armed[engine]
            return armed.kind

    def before_step(self, engine: str) -> None:
        """Called by the owner thread before each step: apply an armed step fault."""
        kind = self._take(engine, ("kill_owner", "fail_steps", "hang"))
        if kind == "kill_owner":
            raise OwnerThreadKilled(f"{engine} owner thread killed by fault injection")
        if kind == "fail_steps":
            raise InjectedFault(f"{engine} step failed by fault injection")
        if kind == "hang":
            self._released.wait()

    def refuse_submit(self, engine: str) -> bool:
        """Called by ``submit``: True when an armed ``overload`` refuses this submission."""
        return self._take(engine, ("overload",)) is not None
