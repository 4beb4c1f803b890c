"""A time-decayed rate estimator on caller-supplied time (no clock reads)."""

from __future__ import annotations

import math

__all__ = ["DecayingRate"]


class DecayingRate:
    """Estimates amount per second with an exponential window of ``tau_s`` seconds.

    After a steady input of ``r`` per second for a few ``tau_s`` the estimate is ``r``; when the
    input stops it decays towards 0 with time constant ``tau_s``.
    """

    def __init__(self, tau_s: float) -> None:
        if not tau_s > 0:
            raise ValueError(f"tau_s must be > 0, got {tau_s}")
        self.tau_s = tau_s
        self._acc = 0.0
        self._t: float | None = None

    def _decay_to(self, now: float) -> None:
        if self._t is not None and now > self._t:
            self._acc *= math.exp(-(now - self._t) / self.tau_s)
        if self._t is None or now > self._t:
            self._t = now

    def add(self, now: float, amount: float) -> None:
        """Record ``amount`` (>= 0) arriving at ``now``."""
        if not (math.isfinite(amount) and amount >= 0):
            raise ValueError(f"amount must be finite and >= 0, got {amount}")
        self._decay_to(now)
        self._acc += amount

    def per_second(self, now: float) -> float:
        """The estimated rate at ``now`` (does not change the state)."""
        if self._t is None:
            return 0.0
        dt = max(0.0, now - self._t)
        return self._acc * math.exp(-dt / self.tau_s) / self.tau_s
