"""Polling helper for the end-to-end tests."""

from __future__ import annotations

import time
from collections.abc import Callable


def wait_until(
    check: Callable[[], bool], *, limit_s: float, what: str, every_s: float = 0.25
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:  # a transient API error is retried until the deadline
            last_error = err
        time.sleep(every_s)
    raise AssertionError(
        f"timed out after {limit_s}s waiting for: {what} (last error: {last_error})"
    )
