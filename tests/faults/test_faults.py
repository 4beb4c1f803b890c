"""The fault suite: each test is a real call over SIP (baresip -> livekit-sip -> livekit-server
-> agent worker -> inference server on the bundled models) with one fault injected at a chosen
moment. From the caller's recording each asserts: agent audio heard again within 3 s of the
fault (DESIGN.md section 5), the expected ending (the call continued, or was hung up), and
that nothing was left behind (agent rooms, inference streams, calls, LLM slots). The next
test's call being greeted and answered proves the call after each fault works.

Every measured time to audio is appended to ``.run/faults/report.jsonl`` (docs/reliability.md
quotes it).
"""

from __future__ import annotations

import asyncio
import json
import os
import signal
import time
from pathlib import Path
from typing import Any

import pytest
from faults_support import (
    DEAD_AIR_LIMIT_S,
    FaultCall,
    arm_fault,
    helper_process,
    http_json,
    job_processes,
)
from stack_queries import agent_rooms, capacity, wait_until

from worker.caller.utterances import DEFAULT_QUESTIONS
from worker.stack.render import project_root

pytestmark = [pytest.mark.integration, pytest.mark.sip, pytest.mark.faults]

TWO = DEFAULT_QUESTIONS[:2]
REPORT = project_root() / ".run" / "faults" / "report.jsonl"


def _report(fault: str, call: FaultCall, outcome: str, work: Path) -> None:
    injected = call.fault_at_s is not None
    tta = call.time_to_audio_s() if injected else None
    dead = call.dead_air_s() if injected else None
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    row = {
        "fault": fault,
        "time_to_audio_s": None if tta is None else round(tta, 2),
        "longest_silence_s": None if dead is None else round(dead, 2),
        "outcome": outcome,
        "at": time.strftime("%Y-%m-%dT%H:%M:%S"),
        "recording": str(work / "heard.wav"),
    }
    with REPORT.open("a") as f:
        f.write(json.dumps(row) + "\n")
    print(f"fault {fault}: time to audio {tta}, longest silence {dead}, outcome {outcome}")


def _assert_audio_again(call: FaultCall) -> float:
    """Agent audio within 3 s of the fault, and no silence over 3 s until the agent's last
    words before the caller speaks again (hold messages and hold music count as audio)."""
    assert call.fault_at_s is not None, "the fault was never injected (no answer heard?)"
    dead = call.dead_air_s()
    assert dead is not None, f"no agent audio after the fault at {call.fault_at_s:.1f} s"
    assert dead <= DEAD_AIR_LIMIT_S, (
        f"{dead:.2f} s of dead air after the fault at {call.fault_at_s:.1f} s: {call.segments}"
    )
    return dead


def _assert_greeted_and_answered_first(call: FaultCall) -> None:
    first = call.script.utterances[0].start_s
    assert call.speech_before(first), "the caller heard no greeting"
    assert call.answered_after(1), "utterance 1 got no answer before the fault"


def _assert_nothing_left(stack: Any) -> None:
    wait_until(lambda: not agent_rooms(stack), limit_s=20, what="no room holds an agent")

    def idle() -> bool:
        cap = capacity(stack.inference_url)
        llm = cap["engines"]["llm"]
        return (
            not any(cap["active_streams"].values())
            and cap["active_calls"] == 0
            and llm.get("active_slots", 0) == 0
            and cap["accepting"]  # the next test's call is admitted, not told "busy"
        )

    wait_until(idle, limit_s=30, what="no inference stream, call or LLM slot left")


def _wait_serving(stack: Any) -> None:
    def ready() -> bool:
        return all(c.state == "healthy" for c in stack.voice.status())

    wait_until(ready, limit_s=60, what="inference and agent healthy again")


def test_inference_killed_mid_answer(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    sup = fault_stack.voice
    before = sup.child("inference")
    assert before.pid is not None
    call = place(
        questions=TWO,
        inject=lambda: os.kill(before.pid, signal.SIGKILL),
        on_answer=True,
        delay_s=0.5,
    )
    _assert_greeted_and_answered_first(call)
    _assert_audio_again(call)
    assert sup.child("inference").restarts == before.restarts + 1
    assert call.answered_after(2) and not call.ended_early(), "the call did not go on"
    _report("inference server SIGKILL mid-answer", call, "continued", tmp_path)
    _assert_nothing_left(fault_stack)


def test_inference_hung_mid_answer(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    sup = fault_stack.voice
    before = sup.child("inference")
    assert before.pid is not None
    call = place(
        questions=TWO,
        inject=lambda: os.kill(before.pid, signal.SIGSTOP),
        on_answer=True,
        delay_s=0.5,
        answer_wait_s=22.0,  # the liveness probe restarts it: 3 s + a restart
    )
    _assert_greeted_and_answered_first(call)
    _assert_audio_again(call)
    assert sup.child("inference").restarts == before.restarts + 1, "the hung server was kept"
    assert call.answered_after(2) and not call.ended_early(), "the call did not go on"
    _report("inference server hung (SIGSTOP) mid-answer", call, "continued", tmp_path)
    _assert_nothing_left(fault_stack)


ENGINE_FAULTS = [
    # engine, fault, count, caller's wait after the question, server restarts, report name
    ("llm", "overload", 1, 14.0, 0, "inference server refuses the answer: overloaded"),
    ("llm", "kill_owner", 1, 20.0, 1, "LLM owner thread dies"),
    # Up to three failed replies before /readyz turns red and the server is restarted.
    ("tts", "fail_steps", -1, 30.0, 1, "TTS engine fails every step"),
]


@pytest.mark.parametrize(
    ("engine", "fault", "count", "wait_s", "restarts", "name"),
    ENGINE_FAULTS,
    ids=[f"{e}-{f}" for e, f, *_ in ENGINE_FAULTS],
)
def test_engine_fault_as_the_caller_finishes(
    fault_stack: Any,
    place: Any,
    tmp_path: Path,
    engine: str,
    fault: str,
    count: int,
    wait_s: float,
    restarts: int,
    name: str,
) -> None:
    """Armed as the caller finishes the second question: that answer fails in the engine, the
    caller hears the hold message, /readyz turns red where the engine cannot serve (the
    supervisor restarts the server), and the call goes on."""
    sup = fault_stack.voice
    url = fault_stack.inference_url
    before = sup.child("inference").restarts
    call = place(
        questions=TWO,
        inject=lambda: arm_fault(url, engine, fault, count=count),
        after_utterance=2,
        answer_wait_s=wait_s,
    )
    _assert_greeted_and_answered_first(call)
    _assert_audio_again(call)
    assert sup.child("inference").restarts == before + restarts
    assert call.answered_after(2) and not call.ended_early(), "the call did not go on"
    _report(name, call, "continued", tmp_path)
    _assert_nothing_left(fault_stack)


def test_job_process_killed(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    agent_pid = fault_stack.voice.child("agent").pid
    assert agent_pid is not None

    def kill_job() -> None:
        jobs = job_processes(agent_pid)
        assert len(jobs) == 1, f"expected the call's one job process, found {jobs}"
        jobs[0].kill()

    call = place(questions=TWO, inject=kill_job, on_answer=True, delay_s=0.5)
    _assert_greeted_and_answered_first(call)
    _assert_audio_again(call)
    assert call.answered_after(2) and not call.ended_early(), "the call did not go on"
    _report("agent job process SIGKILL mid-answer", call, "continued (re-dispatched)", tmp_path)
    _assert_nothing_left(fault_stack)


@pytest.mark.parametrize("helper", ["forkserver", "resource_tracker"])
def test_worker_helper_killed(fault_stack: Any, place: Any, tmp_path: Path, helper: str) -> None:
    """The worker notices, reports unready and exits to be restarted; the call in progress
    hears the goodbye and is hung up (its job cannot outlive the worker); the next call is
    answered by the restarted worker."""
    sup = fault_stack.voice
    agent = sup.child("agent")
    assert agent.pid is not None
    call = place(
        questions=TWO,
        inject=lambda: helper_process(agent.pid, helper).kill(),
        after_utterance=1,
        delay_s=4.0,  # during the answer or just after it
    )
    _assert_greeted_and_answered_first(call)
    _assert_audio_again(call)
    assert call.ended_early(), "the call was not ended after the worker lost its helper"
    assert sup.wait_for(
        lambda st: next(c for c in st if c.name == "agent").restarts == agent.restarts + 1, 30
    ), "the worker was not restarted after its helper died"
    _report(f"worker {helper} SIGKILL mid-call", call, "goodbye + hung up", tmp_path)
    _wait_serving(fault_stack)
    _assert_nothing_left(fault_stack)
    after = place(questions=TWO[:1])
    _assert_greeted_and_answered_first(after)
    _assert_nothing_left(fault_stack)


def test_livekit_server_restarted(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    # Between calls: a room livekit-server holds when it dies is restored from Redis with its
    # participants, who never come back (docs/livekit.md 15).
    _assert_nothing_left(fault_stack)
    lk_sup = fault_stack.livekit.supervisor
    before = lk_sup.child("livekit")
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    assert lk_sup.wait_for(
        lambda st: (
            next(c for c in st if c.name == "livekit").state == "healthy"
            and next(c for c in st if c.name == "livekit").restarts == before.restarts + 1
        ),
        30,
    )
    # The agent worker reconnects and registers again on its own (livekit-agents' backoff).
    time.sleep(3)
    call = place(questions=TWO[:1])
    _assert_greeted_and_answered_first(call)
    _report("livekit-server SIGKILL + restart", call, "next call answered", tmp_path)
    _assert_nothing_left(fault_stack)


def test_faults_disarm(fault_stack: Any) -> None:
    """The suite's server (started with --fault-injection) disarms every fault on DELETE."""
    arm_fault(fault_stack.inference_url, "stt", "overload", count=5)
    armed = http_json(fault_stack.inference_url + "/v1/faults", "DELETE")
    assert armed == {"armed": {}}


def test_call_beyond_capacity_hears_busy_and_admitted_call_goes_on(
    fault_stack: Any, tmp_path: Path
) -> None:
    """With the server full (one call admitted), a second caller hears the pre-rendered busy
    message within 2 s of dialling and is hung up; the admitted call is answered throughout."""
    from faults_support import fault_call

    async def both() -> tuple[FaultCall, FaultCall, float]:
        first = asyncio.create_task(
            fault_call(
                fault_stack.sip_address,
                fault_stack.number,
                tmp_path / "admitted",
                questions=TWO,
            )
        )
        await asyncio.sleep(6)  # the first call is admitted and greeted by then
        t0 = time.monotonic()
        second = await fault_call(
            fault_stack.sip_address, fault_stack.number, tmp_path / "beyond", questions=TWO[:1]
        )
        return await first, second, t0

    admitted, beyond, _ = asyncio.run(both())
    assert beyond.segments, "the caller beyond capacity heard nothing"
    setup_s = beyond.setup_s
    busy_onset = setup_s + beyond.segments[0].start_s
    assert busy_onset <= 2.0, f"busy message heard {busy_onset:.2f} s after dialling"
    assert beyond.ended_early(), "the call beyond capacity was not hung up"
    _assert_greeted_and_answered_first(admitted)
    assert admitted.answered_after(2) and not admitted.ended_early()
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        row = {"fault": "call beyond capacity", "time_to_audio_s": round(busy_onset, 2)}
        f.write(json.dumps({**row, "outcome": "busy message, hung up"}) + "\n")
    _assert_nothing_left(fault_stack)


def test_redis_restarted(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    """Redis killed and restarted by the supervisor: trunks and dispatch rules survive (AOF
    persistence), livekit-server and livekit-sip reconnect, the next call is answered."""
    lk_sup = fault_stack.livekit.supervisor
    before = lk_sup.child("redis")
    assert before.pid is not None
    os.kill(before.pid, signal.SIGKILL)
    assert lk_sup.wait_for(
        lambda st: (
            all(c.state == "healthy" for c in st)
            and next(c for c in st if c.name == "redis").restarts == before.restarts + 1
        ),
        30,
    )
    time.sleep(3)  # LiveKit's message channels in Redis come back within a second or so
    call = place(questions=TWO[:1])
    _assert_greeted_and_answered_first(call)
    _report("redis SIGKILL + restart", call, "next call answered", tmp_path)
    _assert_nothing_left(fault_stack)


def test_caller_silent_for_two_minutes(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    """'Hold on...': 120 s of caller silence (four times the STT server's utterance window)
    and the call still works: the next question is answered, the call was not closed."""
    call = place(questions=TWO, answer_wait_s=(120.0, 14.0))
    _assert_greeted_and_answered_first(call)
    assert call.answered_after(2), "the question after the long silence got no answer"
    assert not call.ended_early()
    _report_plain("caller silent for 120 s", "continued")
    _assert_nothing_left(fault_stack)


FORTY = tuple(f"{q} Question {n}." for n, q in enumerate(DEFAULT_QUESTIONS * 14, start=1))[:40]


def test_forty_turn_call(fault_stack: Any, place: Any, tmp_path: Path) -> None:
    """40 turns: the history outgrows the model's context and is trimmed; the call keeps
    answering to the end (the caller talks over long answers: barge-in on every turn)."""
    agent_log = fault_stack.voice.child("agent").log_path
    mark = agent_log.stat().st_size
    call = place(questions=FORTY, answer_wait_s=6.0)
    _assert_greeted_and_answered_first(call)
    for turn in (20, 39, 40):
        assert call.answered_after(turn), f"turn {turn} of 40 got no answer"
    assert not call.ended_early()
    log = agent_log.read_bytes()[mark:].decode(errors="replace")
    assert "payload_too_large" not in log
    assert "chat history over the prompt budget" in log, "the history was never trimmed"
    _report_plain("40-turn call", "continued to the end")
    _assert_nothing_left(fault_stack)


def _report_plain(what: str, outcome: str) -> None:
    REPORT.parent.mkdir(parents=True, exist_ok=True)
    with REPORT.open("a") as f:
        f.write(json.dumps({"fault": what, "time_to_audio_s": None, "outcome": outcome}) + "\n")
