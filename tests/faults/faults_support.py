"""The fault suite's instruments: a real SIP call (baresip -> livekit-sip) with a fault injected
at a chosen moment, and what the caller heard after it.

The fault's moment is marked on the heard recording's own clock (seconds of audio baresip had
received when the fault was injected), so "time to audio" is measured where the caller is:
from the fault (or, if the agent was speaking then, from the end of that speech) to the next
speech onset in the recording.
"""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

from worker.caller.analysis import Segment, speech_segments
from worker.caller.audio import write_wav
from worker.caller.sip import SIP_SAMPLE_RATE, BaresipCaller
from worker.caller.transport import CallRecording
from worker.caller.utterances import CallerScript, build_caller_script

DEAD_AIR_LIMIT_S = 3.0
"""DESIGN.md section 5: after any single fault the caller hears agent audio within 3 s."""


@dataclass
class FaultCall:
    script: CallerScript
    recording: CallRecording
    fault_at_s: float | None
    """When the fault was injected, on the heard recording's clock (None: never injected)."""
    segments: list[Segment]
    setup_s: float
    """From the INVITE to the call being answered."""

    @property
    def heard_s(self) -> float:
        return len(self.recording.samples) / self.recording.sample_rate

    def speech_before(self, t: float) -> list[Segment]:
        return [s for s in self.segments if s.start_s < t]

    def next_utterance_start_s(self) -> float:
        """When the caller starts speaking again after the fault (heard clock), or the end
        of the recording: silence after that is the caller's turn, not dead air."""
        assert self.fault_at_s is not None
        for utt in self.script.utterances:
            start = utt.start_s + self.recording.schedule_offset_s
            if start > self.fault_at_s:
                return start
        return self.heard_s

    def dead_air_s(self) -> float | None:
        """The longest silence the caller heard from the fault until the agent's last audio
        before the caller's next utterance: the fault-to-first-audio gap included, the quiet
        after the agent's last words (waiting for the caller) excluded. None: no agent audio
        at all after the fault."""
        assert self.fault_at_s is not None
        until = self.next_utterance_start_s()
        cursor, longest, heard = self.fault_at_s, 0.0, False
        for seg in self.segments:
            if seg.end_s <= self.fault_at_s or seg.start_s >= until:
                continue
            longest = max(longest, seg.start_s - cursor)
            cursor = max(cursor, seg.end_s)
            heard = True
        return longest if heard else None

    def time_to_audio_s(self) -> float | None:
        """From the fault to the first agent audio heard after it (0 when the agent was
        audible at that moment)."""
        assert self.fault_at_s is not None
        for seg in self.segments:
            if seg.end_s > self.fault_at_s:
                return max(0.0, seg.start_s - self.fault_at_s)
        return None

    def answered_after(self, utterance: int) -> bool:
        """Agent speech starts within 16 s after the end of utterance ``utterance`` (1-based)."""
        end = self.script.utterances[utterance - 1].end_s + self.recording.schedule_offset_s
        return any(end < s.start_s < end + 16 for s in self.segments)

    def ended_early(self) -> bool:
        """The call ended (the agent hung up) well before the caller's script did."""
        return self.heard_s < self.script.duration_s - 3.0


async def _inject_when(
    caller: BaresipCaller,
    at_heard_s: float,
    inject: Callable[[], Any],
    limit_s: float,
    *,
    on_answer: bool,
    delay_s: float,
) -> float | None:
    """At ``at_heard_s`` on the heard clock (or, ``on_answer``, once agent speech starts after
    it), wait ``delay_s`` more, inject, and return the heard-clock moment of the fault."""
    deadline = time.monotonic() + limit_s
    while time.monotonic() < deadline:
        heard = caller.heard_so_far()
        now_s = len(heard) / SIP_SAMPLE_RATE
        if now_s >= at_heard_s and (
            not on_answer
            or any(s.start_s > at_heard_s for s in speech_segments(heard, SIP_SAMPLE_RATE))
        ):
            await asyncio.sleep(delay_s)
            fault_at = len(caller.heard_so_far()) / SIP_SAMPLE_RATE
            await asyncio.to_thread(inject)
            return fault_at
        await asyncio.sleep(0.05)
    return None


async def fault_call(
    sip_address: tuple[str, int],
    number: str,
    work_dir: Path,
    *,
    questions: tuple[str, ...],
    inject: Callable[[], Any] | None = None,
    after_utterance: int = 1,
    on_answer: bool = False,
    delay_s: float = 0.0,
    answer_wait_s: float | Sequence[float] = 14.0,
) -> FaultCall:
    """Place one scripted SIP call; ``delay_s`` after the end of utterance ``after_utterance``
    (``on_answer``: after the agent's answer to it starts being heard) run ``inject`` (in a
    thread) and note the moment on the heard clock."""
    script = build_caller_script(
        work_dir / "caller",
        questions=questions,
        sample_rate=SIP_SAMPLE_RATE,
        greeting_wait_s=9.0,
        answer_wait_s=answer_wait_s,
    )
    caller = BaresipCaller(
        sip_host=sip_address[0], sip_port=sip_address[1], number=number, work_dir=work_dir / "sip"
    )
    injected: asyncio.Task[float | None] | None = None
    if inject is not None:
        at = script.utterances[after_utterance - 1].end_s
        injected = asyncio.create_task(
            _inject_when(
                caller, at, inject, script.duration_s + 30, on_answer=on_answer, delay_s=delay_s
            )
        )
    try:
        recording = await caller.call(script)
    finally:
        if injected is not None and not injected.done():
            injected.cancel()
    fault_at = None
    if injected is not None and not injected.cancelled():
        fault_at = injected.result()
    write_wav(work_dir / "heard.wav", recording.samples, recording.sample_rate)
    segments = speech_segments(recording.samples, recording.sample_rate)
    assert caller.dialed_at is not None and caller.answered_at is not None
    return FaultCall(script, recording, fault_at, segments, caller.answered_at - caller.dialed_at)


def http_json(url: str, method: str = "GET", body: dict[str, Any] | None = None) -> Any:
    data = json.dumps(body).encode() if body is not None else None
    req = urllib.request.Request(url, data=data, method=method)
    req.add_header("Content-Type", "application/json")
    with urllib.request.urlopen(req, timeout=3) as resp:
        return json.loads(resp.read() or b"null")


def arm_fault(inference_url: str, engine: str, fault: str, count: int = -1) -> None:
    http_json(
        inference_url + "/v1/faults", "POST", {"engine": engine, "fault": fault, "count": count}
    )


def job_processes(agent_pid: int) -> list[psutil.Process]:
    """The worker's job processes that hold a call: children of its forkserver (forked, so
    their command line is the forkserver's) with sockets open; idle prewarmed ones have none."""
    out = []
    server = helper_process(agent_pid, "forkserver")
    for proc in server.children():
        try:
            if proc.net_connections(kind="tcp"):
                out.append(proc)
        except psutil.Error:
            continue
    return out


def helper_process(agent_pid: int, marker: str) -> psutil.Process:
    """The worker's multiprocessing helper (a direct child) whose command line contains
    ``marker``."""
    for proc in psutil.Process(agent_pid).children():
        try:
            if marker in " ".join(proc.cmdline()):
                return proc
        except psutil.Error:
            continue
    raise AssertionError(f"no {marker} process under the agent worker {agent_pid}")
