"""Turn-taking over a real SIP call (baresip -> livekit-sip -> agent -> inference server) with the
shipped agent config: a mid-sentence pause is not answered into, a caller speaking over the
answer stops it and gets an answer of their own, the interrupted answer's streams are gone and
the agent records that the answer was cut (its history keeps only what was heard).

How fast each of these happens is the benchmark's business (``voicestack loadtest``,
docs/latency.md); the bounds here only separate working from broken.
"""

from __future__ import annotations

import asyncio
import re
from pathlib import Path
from typing import Any

import pytest
from tests_e2e_support import capacity, wait_until

from worker.bench.loadtest import analyse_recording
from worker.caller.sip import SIP_SAMPLE_RATE, BaresipCaller
from worker.caller.utterances import CallerTurn, build_turn_script
from worker.telephony.provision import provision_loopback

pytestmark = [pytest.mark.integration, pytest.mark.e2e, pytest.mark.sip]

TURNS = (
    CallerTurn(("How do I reset my password?",), wait_s=3.0),
    CallerTurn(("Stop, sorry, how long does that take?",), wait_s=11.0, kind="barge_in"),
    CallerTurn(
        ("I would like to know the price of", "express shipping."),
        pause_s=0.7,
        wait_s=11.0,
        kind="paused",
    ),
)


def test_pause_barge_in_and_freed_streams_over_sip(voice_stack: Any, tmp_path: Path) -> None:
    lk = voice_stack.livekit
    tel, _ = provision_loopback(lk)
    assert lk.sip_address is not None
    script = build_turn_script(
        tmp_path / "caller", TURNS, sample_rate=SIP_SAMPLE_RATE, greeting_wait_s=8.0
    )
    caller = BaresipCaller(
        sip_host=lk.sip_address[0],
        sip_port=lk.sip_address[1],
        number=tel.trunks[0].numbers[0],
        work_dir=tmp_path / "sip",
    )
    recording = asyncio.run(caller.call(script))
    schedule = tuple(
        u.shifted(recording.schedule_offset_s) for u in caller.measured_schedule(script)
    )
    result = analyse_recording(1, recording.samples, recording.sample_rate, schedule)
    assert result.greeted, "no greeting heard"
    question, barge, paused = result.turns

    assert question.v2v_s is not None, "the question before the barge-in got no answer"
    assert barge.agent_talking_at_onset, "the agent was not answering when the caller cut in"
    assert barge.stop_s is not None and barge.stop_s < 1.5, (
        f"the agent kept talking over the caller (stop after {barge.stop_s} s)"
    )
    assert barge.v2v_s is not None, "the interruption itself got no answer"
    assert paused.cut_in is False, "the agent answered into the mid-sentence pause"
    assert paused.v2v_s is not None, "the paused question got no answer"

    # The call is over: no LLM or TTS stream of the interrupted answer (or any other) is left.
    wait_until(
        lambda: not any(capacity(voice_stack.inference_url)["active_streams"].values()),
        limit_s=15,
        what="inference streams freed after the call",
    )
    log = (lk.run_dir / "voice" / "agent.log").read_text(errors="replace")
    assert re.search(r"the caller speaks over the agent", log)
    assert re.search(r"answer interrupted; the history keeps what was heard", log)
