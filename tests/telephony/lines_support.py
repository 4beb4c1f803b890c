"""The telephony suite's lines and helpers (tests/telephony/conftest.py builds the stack: the
session's redis + livekit-server + livekit-sip, a real inference server and an agent worker
whose flows file defines three lines on three numbers):

- ``+15550100`` (``support``): a keypad menu (1: opening hours, 2: a 6-digit order number,
  0: a person) and transfers to the human's desk phone (a baresip UA that answers itself);
- ``+15550102`` (``sales``): its own greeting; its transfer target is a port nobody listens on,
  so every transfer fails; it records its calls;
- ``+15550103`` (``after-hours``): never open: the closed message, then a hang-up.

The shipped trunk is provisioned with those numbers for the package and restored after.
"""

from __future__ import annotations

import asyncio
import contextlib
import re
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import yaml

from worker.caller.analysis import speech_segments
from worker.caller.audio import write_wav
from worker.caller.sip import SIP_SAMPLE_RATE
from worker.caller.sip_phone import SipPhone
from worker.caller.transcribe import transcribe_speech
from worker.caller.utterances import speak_espeak
from worker.config.loader import parse_model
from worker.config.telephony import TelephonyConfig
from worker.records.record import CallRecord
from worker.records.store import RecordStore, StoreError
from worker.stack.loopback import LoopbackStack
from worker.stack.render import project_root
from worker.stack.supervisor import BackgroundSupervisor

SUPPORT, SALES, CLOSED = "+15550100", "+15550102", "+15550103"
SALES_GREETING = "Welcome to Northwind Sales. What can I do for you?"
CLOSED_MESSAGE = "Northwind Support is closed now. Please call again tomorrow. Goodbye."
OPENING_HOURS = "We are open Monday to Friday, from eight in the morning to six in the evening."


@dataclass(frozen=True)
class LineStack:
    livekit: LoopbackStack
    voice: BackgroundSupervisor
    inference_url: str
    human_port: int
    callee_port: int
    """Where the outbound trunk ``lines-out`` sends its INVITEs (destinations +1555...)."""
    run_dir: Path
    telephony: TelephonyConfig

    @property
    def sip_address(self) -> tuple[str, int]:
        assert self.livekit.sip_address is not None
        return self.livekit.sip_address

    def target(self, number: str) -> str:
        host, port = self.sip_address
        return f"sip:{number}@{host}:{port}"

    def agent_log(self) -> str:
        return (self.run_dir / "agent.log").read_text(errors="replace")

    async def record(self, call_id: str, limit_s: float = 20.0) -> CallRecord:
        """The call's record once the agent's writer has put it in this stack's store."""
        store = RecordStore(f"sqlite:///{self.run_dir / 'records' / 'records.db'}")
        try:
            loop = asyncio.get_running_loop()
            until = loop.time() + limit_s
            while loop.time() < until:
                with contextlib.suppress(StoreError):  # not created until the first write
                    record = await asyncio.to_thread(store.get, call_id)
                    if record is not None:
                        return record
                await asyncio.sleep(0.3)
        finally:
            store.close()
        raise AssertionError(f"no record of call {call_id} within {limit_s:g} s")


def flows_for(human_port: int, dead_port: int) -> dict[str, object]:
    return {
        "transfer_targets": {
            "desk": f"sip:frontdesk@127.0.0.1:{human_port}",
            "nowhere": f"sip:nobody@127.0.0.1:{dead_port}",
        },
        "flows": [
            {
                "name": "support",
                "numbers": [SUPPORT],
                "greeting": "Northwind Support.",
                "menu_prompt": "Press 1 for opening hours, 2 for your order, or 0 for a person.",
                "menu": {
                    "1": {"say": OPENING_HOURS},
                    "2": {"collect": "order"},
                    "0": {"transfer": True},
                },
                "collect": {
                    "order": {
                        "prompt": "Please type your six digit order number.",
                        "label": "order number",
                        "min_digits": 6,
                        "max_digits": 6,
                        "timeout_s": 6,
                    }
                },
                "transfer": {"target": "desk", "key": "0", "ringing_timeout_s": 10},
            },
            {
                "name": "sales",
                "numbers": [SALES],
                "greeting": SALES_GREETING,
                "transfer": {"target": "nowhere", "key": "0", "ringing_timeout_s": 5},
                "records": {"recording": True},  # this line records its calls
            },
            {
                "name": "after-hours",
                "numbers": [CLOSED],
                "hours": {"open": {}, "closed_message": CLOSED_MESSAGE},
            },
        ],
    }


def agent_config(dest: Path, flows: Path) -> Path:
    data = yaml.safe_load((project_root() / "config" / "agent.yaml").read_text())
    data["flows"] = str(flows)
    data["worker"]["log_transcripts"] = True  # the digits and notes are what the tests read
    # This stack's own records store and spool (default redaction: the logs show "[dtmf]").
    records = dest / "records"
    data["records"] = {
        "store_url": f"sqlite:///{records / 'records.db'}",
        "spool_dir": str(records / "spool"),
        "recordings_dir": str(records / "audio"),
        "flush_interval_s": 0.5,
    }
    path = dest / "agent.yaml"
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


def caller_wav(path: Path, said: list[tuple[float, str]], total_s: float = 90.0) -> Path:
    """An 8 kHz caller microphone: ``said`` utterances (at seconds from answer) in silence.
    baresip hangs up when the file ends, so ``total_s`` outlasts the call."""
    out = np.zeros(int(total_s * SIP_SAMPLE_RATE), dtype=np.int16)
    for at, text in said:
        speech = speak_espeak(text, SIP_SAMPLE_RATE)
        start = int(at * SIP_SAMPLE_RATE)
        out[start : start + len(speech)] = speech[: len(out) - start]
    write_wav(path, out, SIP_SAMPLE_RATE)
    return path


TRUNK = {"name": "out", "address": "10.0.0.5:5060", "numbers": ["+15550100"],
         "destinations": ["+1555"]}  # fmt: skip


def telephony_with_outbound(**trunk: object) -> TelephonyConfig:
    """The shipped telephony config (loopback values) plus outbound trunk :data:`TRUNK`."""
    data = yaml.safe_load((project_root() / "config" / "telephony.yaml").read_text())
    data["trunks"][0]["numbers"] = ["+15550100"]
    data["trunks"][0]["allowed_addresses"] = ["127.0.0.1/32"]
    data["trunks"][0]["auth_username"] = data["trunks"][0]["auth_password"] = None
    data["outbound_trunks"] = [{**TRUNK, **trunk}]
    return parse_model(data, TelephonyConfig)


async def speech_after(phone: SipPhone, after_s: float, limit_s: float) -> float:
    """Seconds into the heard recording when speech starts after ``after_s``."""
    loop = asyncio.get_running_loop()
    until = loop.time() + limit_s
    while loop.time() < until:
        for seg in speech_segments(phone.heard(), SIP_SAMPLE_RATE):
            if seg.start_s >= after_s:
                return seg.start_s
        await asyncio.sleep(0.2)
    raise AssertionError(f"no speech heard after {after_s:.1f} s within {limit_s:g} s")


async def quiet_after(phone: SipPhone, after_s: float, quiet_s: float, limit_s: float) -> float:
    """Seconds into the heard recording when it has been silent for ``quiet_s`` after speech
    that ended after ``after_s`` (the agent finished saying something)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + limit_s
    while loop.time() < until:
        heard = phone.heard()
        now = len(heard) / SIP_SAMPLE_RATE
        segs = [s for s in speech_segments(heard, SIP_SAMPLE_RATE) if s.end_s > after_s]
        if segs and now - segs[-1].end_s >= quiet_s:
            return segs[-1].end_s
        await asyncio.sleep(0.2)
    raise AssertionError(f"the agent did not finish speaking within {limit_s:g} s")


async def heard_text(stack: LineStack, phone: SipPhone, start_s: float, end_s: float) -> str:
    """What the agent said between ``start_s`` and ``end_s`` of the heard recording, as
    lower-case words without punctuation (waits until the recording is that long)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + end_s - start_s + 30
    heard = phone.heard()
    while len(heard) < end_s * SIP_SAMPLE_RATE and loop.time() < until:
        await asyncio.sleep(0.1)  # the recording is a file baresip writes: poll it
        heard = phone.heard()
    part = heard[int(start_s * SIP_SAMPLE_RATE) : int(end_s * SIP_SAMPLE_RATE)]
    text = await transcribe_speech(part, SIP_SAMPLE_RATE, inference_url=stack.inference_url)
    # Whisper punctuates as it pleases ("your 6-digit order. number."): compare words only.
    return " ".join(re.sub(r"[^a-z0-9']+", " ", text.lower()).split())


async def log_has(stack: LineStack, pattern: str, limit_s: float) -> re.Match[str]:
    loop = asyncio.get_running_loop()
    until = loop.time() + limit_s
    while loop.time() < until:
        match = re.search(pattern, stack.agent_log())
        if match:
            return match
        await asyncio.sleep(0.2)
    raise AssertionError(f"agent log has no {pattern!r} within {limit_s:g} s")


def room_of(stack: LineStack, mark: int) -> str:
    """The room of the newest call whose line event appears after log offset ``mark``."""
    found = re.findall(r"call (\S+) event line flow=", stack.agent_log()[mark:])
    assert found, "the agent never picked a line for the call"
    return str(found[-1])


ANSWER_S = 30.0
"""How long a test waits for livekit-sip to answer (an agent must be dispatched first)."""


@dataclass
class Call:
    """A caller's phone in an answered call, and where the agent's log stood when it dialled."""

    stack: LineStack
    phone: SipPhone
    mark: int

    def room(self) -> str:
        """The call's room, from the agent's line event (after the agent picked the line)."""
        return room_of(self.stack, self.mark)


@asynccontextmanager
async def calling(
    stack: LineStack,
    number: str,
    work: Path,
    said: list[tuple[float, str]] | None = None,
    *,
    total_s: float = 90.0,
) -> AsyncIterator[Call]:
    """A caller who says ``said`` (see :func:`caller_wav`) dials ``number``; yields once the
    call is answered, hangs up (quits) when the block ends."""
    mark = len(stack.agent_log())
    wav = caller_wav(work / "caller.wav", said or [], total_s)
    async with SipPhone(work / "caller", user="caller", wav=wav) as phone:
        await phone.dial(stack.target(number))
        await phone.wait_event("CALL_ESTABLISHED", ANSWER_S)
        yield Call(stack, phone, mark)
