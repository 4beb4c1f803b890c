"""A whole call through the real stack on loopback: LiveKit, the agent worker, the inference
server with the bundled models, and a scripted caller that records what it hears.

WebRTC calls run everywhere (CI included); SIP calls (baresip -> livekit-sip) are marked
``sip`` and need the livekit-sip binary. Each checks that the caller hears the greeting (our
STT of the recording contains its key words), gets a non-empty spoken answer to every
utterance, and that hanging up mid-answer ends the agent job and frees its inference streams.
"""

from __future__ import annotations

import re
import time
from pathlib import Path
from typing import Any

import pytest
from tests_e2e_support import EgressWatch, agent_rooms, capacity, place_call, wait_until

from worker.caller.demo import CallOutcome
from worker.caller.transport import HangUp
from worker.caller.utterances import DEFAULT_QUESTIONS

pytestmark = [pytest.mark.integration, pytest.mark.e2e]

GREETING_WORDS = {"thank", "thanks", "calling", "support", "help", "northwind", "north", "today"}


def _check_conversation(outcome: CallOutcome, questions: int) -> None:
    analysis = outcome.analysis
    assert analysis.greeting is not None, "the caller heard no greeting"
    words = set(re.findall(r"[a-z]+", analysis.greeting_text.lower()))
    assert len(words & GREETING_WORDS) >= 2, f"greeting heard as {analysis.greeting_text!r}"
    assert len(analysis.turns) == questions
    for turn in analysis.turns:
        assert turn.answer is not None, f"utterance {turn.index} got no spoken answer"
        assert turn.latency_s is not None and turn.latency_s > 0
        assert re.search(r"[a-z]{2}", turn.agent_text.lower()), (
            f"answer {turn.index} transcribed as {turn.agent_text!r}"
        )
    assert analysis.failures() == []


def _check_hangup_frees_everything(voice_stack: Any, outcome: CallOutcome) -> None:
    analysis, rec = outcome.analysis, outcome.recording
    assert rec.hung_up_early
    answer = analysis.turns[0].answer
    assert answer is not None, "no answer started before the hang-up"
    # Mid-answer: the agent was still speaking when the caller hung up.
    assert len(rec.samples) / rec.sample_rate - answer.end_s < 0.5
    hung_up_at = time.monotonic()
    wait_until(
        lambda: not any(capacity(voice_stack.inference_url)["active_streams"].values()),
        limit_s=15,
        what="inference streams freed after hang-up",
    )
    wait_until(lambda: not agent_rooms(voice_stack), limit_s=15, what="agent job ended")
    assert time.monotonic() - hung_up_at < 20


def test_webrtc_call_greets_and_answers(voice_stack: Any, tmp_path: Path) -> None:
    pid = voice_stack.supervisor.child("agent").pid
    with EgressWatch(pid) as egress:
        outcome = place_call(voice_stack, "webrtc", tmp_path, questions=DEFAULT_QUESTIONS[:2])
    _check_conversation(outcome, 2)
    # The agent worker and its job process talked to loopback only during the whole call.
    assert egress.samples > 10
    # It did see the worker's own connections (LiveKit, inference server), so it looked at
    # the right processes.
    inference_port = int(voice_stack.inference_url.rsplit(":", 1)[1])
    assert inference_port in egress.loopback_peers
    assert egress.remote == set()


@pytest.mark.sip
def test_sip_call_greets_and_answers(voice_stack: Any, tmp_path: Path) -> None:
    outcome = place_call(voice_stack, "sip", tmp_path, questions=DEFAULT_QUESTIONS[:2])
    _check_conversation(outcome, 2)
    # The media leg stayed on loopback (baresip reports where RTP came from).
    rtp = next(n for n in outcome.recording.notes if n.startswith("RTP received from "))
    sources = rtp.removeprefix("RTP received from ").split(", ")
    assert sources and all(src.startswith("127.0.0.1:") for src in sources), rtp


@pytest.mark.parametrize("transport", ["webrtc", pytest.param("sip", marks=pytest.mark.sip)])
def test_hangup_mid_answer_ends_job_and_frees_streams(
    voice_stack: Any, tmp_path: Path, transport: str
) -> None:
    outcome = place_call(
        voice_stack,
        transport,
        tmp_path,
        questions=DEFAULT_QUESTIONS[:1],
        hang_up=HangUp(turn=1, after_answer_s=0.5),
    )
    _check_hangup_frees_everything(voice_stack, outcome)
