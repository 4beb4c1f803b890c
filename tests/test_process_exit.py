"""``worker.process_exit``: a process that used livekit.rtc exits with its own status, its last
output flushed, and one that never did exits the ordinary way."""

from __future__ import annotations

import subprocess
import sys
import textwrap

import pytest

WITH_RTC = """
import numpy as np
from livekit import rtc
from worker.process_exit import exit_process, rtc_runtime_live

resampler = rtc.AudioResampler(48000, 16000)
resampler.push(rtc.AudioFrame(np.zeros(960, np.int16).tobytes(), 48000, 1, 960))
assert rtc_runtime_live()
print("last words", end="")
exit_process({status})
"""

WITHOUT_RTC = """
import atexit
from worker.process_exit import exit_process, rtc_runtime_live

atexit.register(lambda: print("finalized normally", end=""))
assert not rtc_runtime_live()
exit_process({status})
"""


def _run(source: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", textwrap.dedent(source)],
        capture_output=True,
        text=True,
        timeout=60,
    )


@pytest.mark.parametrize("status", [0, 3])
def test_live_rtc_runtime_exits_with_the_status_and_flushed_output(status: int) -> None:
    done = _run(WITH_RTC.format(status=status))
    assert done.returncode == status, done.stderr
    assert done.stdout == "last words"
    assert "panicked" not in done.stderr


def test_without_rtc_the_process_finalizes_normally() -> None:
    done = _run(WITHOUT_RTC.format(status=5))
    assert done.returncode == 5, done.stderr
    assert done.stdout == "finalized normally"
