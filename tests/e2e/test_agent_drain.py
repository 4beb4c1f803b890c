"""SIGTERM drains: the worker stops taking calls but the live call is served to its end, and
only then does the worker exit (production ``start`` mode)."""

from __future__ import annotations

import os
import signal
import threading
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest
from tests_e2e_support import agent_rooms, place_call, wait_until

from worker.caller.demo import CallOutcome
from worker.caller.utterances import DEFAULT_QUESTIONS

pytestmark = [pytest.mark.integration, pytest.mark.e2e]


def _status(url: str) -> int:
    try:
        with urllib.request.urlopen(url, timeout=2) as resp:
            return int(resp.status)
    except urllib.error.HTTPError as err:
        return int(err.code)
    except OSError:
        return 0


def test_sigterm_lets_the_live_call_finish(voice_stack: Any, tmp_path: Path) -> None:
    sup = voice_stack.supervisor
    assert _status(voice_stack.agent_ready_url) == 200
    result: dict[str, CallOutcome | BaseException] = {}

    def call() -> None:
        try:
            result["outcome"] = place_call(
                voice_stack, "webrtc", tmp_path, questions=DEFAULT_QUESTIONS[:1]
            )
        except BaseException as err:
            result["error"] = err

    # Rooms an agent of an earlier test still shows in (until LiveKit times them out) are not
    # this call: wait for a new one.
    earlier = set(agent_rooms(voice_stack))
    thread = threading.Thread(target=call, daemon=True)
    thread.start()
    wait_until(
        lambda: bool(set(agent_rooms(voice_stack)) - earlier),
        limit_s=40,
        what="the agent joined the call",
    )
    before = sup.child("agent")
    assert before.pid is not None
    os.kill(before.pid, signal.SIGTERM)  # what a container runtime sends to stop the worker
    wait_until(
        lambda: _status(voice_stack.agent_ready_url) == 503,
        limit_s=10,
        what="the worker reports draining",
    )
    thread.join(120)
    assert not thread.is_alive(), "the call did not end"
    if "error" in result:
        raise AssertionError(f"the call failed during the drain: {result['error']!r}")
    outcome = result["outcome"]
    assert isinstance(outcome, CallOutcome)
    # The caller's question, asked after SIGTERM, still got a spoken answer.
    turn = outcome.analysis.turns[0]
    assert turn.answer is not None and turn.agent_text.strip(), outcome.analysis
    # Once the call is over the drained worker exits cleanly (the supervisor restarts it).
    wait_until(
        lambda: sup.child("agent").restarts > before.restarts,
        limit_s=60,
        what="the drained worker exited",
    )
    assert sup.child("agent").last_exit == 0
