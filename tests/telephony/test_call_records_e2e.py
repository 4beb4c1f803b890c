"""A real SIP call's record: the caller spells an e-mail address; the record in the store
(and the agent's log, which has transcripts on in this suite) holds it only redacted, with the
line, the outcome and the per-turn timings; the line records, and the recording has the
address silenced. (Typed digits: test_call_control_e2e.py.)

The caller speaks with the bundled Piper voice here, not espeak: Whisper tiny.en turns
espeak over a phone line into other words ("two big salmon one"). Spoken card and phone numbers
are not used either: tiny.en over 8 kHz audio writes them wrong more often than right
("415552671", "4,2424020042"), which would test the recogniser, not the redaction; the
redactor's unit tests cover every number format Whisper does write.
"""

from __future__ import annotations

import asyncio
import hashlib
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from lines_support import SALES, LineStack, log_has, room_of, speech_after

from worker.caller.audio import resample, write_wav
from worker.caller.sip import SIP_SAMPLE_RATE
from worker.caller.sip_phone import SipPhone
from worker.inference.engines.whisper_eval import synthesize_16k
from worker.models.paths import bundled_model_files
from worker.records.audio import RECORDING_RATE, decode_stereo
from worker.records.live import LiveFeed
from worker.records.record import CallRecord

pytestmark = [pytest.mark.integration, pytest.mark.sip]

SAID = [(7.0, "Hello, my email is john dot smith at example dot com.")]
# The address in any of the ways a transcript writes it.
ADDRESS = re.compile(r"smith\W*(?:@|\bat\b|\.)\W*example|smith\s+dot\s+example")


def piper_caller_wav(path: Path, total_s: float = 40.0) -> Path:
    clips = synthesize_16k([text for _, text in SAID], bundled_model_files().tts_onnx)
    out = np.zeros(int(total_s * SIP_SAMPLE_RATE), dtype=np.int16)
    for (at, _), clip in zip(SAID, clips, strict=True):
        pcm = (np.clip(clip, -1.0, 1.0) * 20000).astype(np.int16)
        speech = resample(pcm, 16_000, SIP_SAMPLE_RATE)
        start = int(at * SIP_SAMPLE_RATE)
        out[start : start + len(speech)] = speech[: len(out) - start]
    write_wav(path, out, SIP_SAMPLE_RATE)
    return path


def check_recording(stack: LineStack, record: CallRecord) -> None:
    """The sales line records: a stereo file with its hash, the caller's e-mail silenced on
    the caller's channel (from word timings: the words before it stay), the agent audible."""
    rec = record.recording
    assert rec is not None, "the sales line records its calls"
    path = stack.run_dir / "records" / "audio" / rec.path
    assert rec.format == "ogg" and path.suffix == ".ogg"
    assert hashlib.sha256(path.read_bytes()).hexdigest() == rec.sha256
    assert rec.bytes == path.stat().st_size
    assert rec.duration_s == pytest.approx(record.duration_s, abs=3.0)
    assert not list((stack.run_dir / "records" / "audio" / ".raw").glob("*"))  # raw removed
    audio = decode_stereo(path)
    rate = RECORDING_RATE
    spans = [(s, e) for c, s, e in rec.silenced if c == 0]
    assert spans, rec.silenced
    # The address is a few words: word timings silence seconds, not the whole turn.
    assert sum(e - s for s, e in spans) < 4.0, spans
    for start, end in spans:
        # (below -40 dB: 32 kb/s joint-stereo Opus lets a trace of the agent's channel in)
        assert np.abs(audio[0, int((start + 0.02) * rate) : int((end - 0.02) * rate)]).max() < 0.01
    heard = np.abs(audio[0])
    first = spans[0][0]
    assert heard[: int(first * rate)].max() > 0.05, "the caller's words before it are kept"
    assert np.abs(audio[1]).max() > 0.05, "the agent's channel holds its speech"


def test_spoken_personal_data_is_stored_redacted(line_stack: LineStack, tmp_path: Path) -> None:
    wav = piper_caller_wav(tmp_path / "piper-caller.wav")

    events: list[dict[str, Any]] = []

    async def watch(feed: LiveFeed) -> None:
        async for event in feed.subscribe():
            events.append(event)

    async def run() -> str:
        mark = len(line_stack.agent_log())
        # The console's view: the agents' live events over the stack's Redis.
        feed = LiveFeed(f"redis://{line_stack.livekit.rendered.env['REDIS_ADDRESS']}/0")
        watcher = asyncio.create_task(watch(feed))
        try:
            return await call(mark)
        finally:
            await asyncio.sleep(2.0)  # the record is kept after the hang-up: call_ended
            watcher.cancel()
            await asyncio.gather(watcher, return_exceptions=True)
            await feed.aclose()

    async def call(mark: int) -> str:
        async with SipPhone(tmp_path / "caller", user="caller", wav=wav) as phone:
            await phone.dial(line_stack.target(SALES))
            await phone.wait_event("CALL_ESTABLISHED", 30)
            await speech_after(phone, 0.0, 20)
            await log_has(line_stack, r"event line flow=sales", 10)
            room = room_of(line_stack, mark)
            # The utterance transcribed (a final caller turn) and answered, then hang up.
            await log_has(line_stack, rf"call {room}: caller turn: .*email", 40)
            await log_has(line_stack, rf"call {room} turn \d+: .* e2e=\d+ms", 30)
        return room

    room = asyncio.run(run())
    record = asyncio.run(line_stack.record(room))
    caller_said = [t.text for t in record.turns if t.role == "caller"]
    text = " ".join(caller_said)
    assert "[email]" in text, text
    for secret in ("john", "smith", "example"):
        assert secret not in text.lower(), (secret, text)
    # Nor anywhere else in the record. (The agent may well say "John Smith" or even
    # "example.com": a name or a bare domain is not an address.)
    assert not ADDRESS.search(record.model_dump_json().lower())
    assert record.flow == "sales" and record.outcome == "completed"
    assert record.ended_by == "caller"
    # The agent answered the caller: its replies carry their latency breakdown.
    answers = [t for t in record.turns if t.role == "agent" and "e2e" in t.latency]
    assert answers, record.turns
    assert all(set(t.latency) >= {"llm_ttft", "tts_ttfb"} for t in answers), answers
    check_recording(line_stack, record)
    # The live view saw the call start, the caller's turn (redacted), the answer and the end.
    mine = [e for e in events if e.get("call_id") == room]
    kinds = [e["type"] for e in mine]
    assert kinds[0] == "call_started" and kinds[-1] == "call_ended", kinds
    assert {"caller_turn", "agent_turn", "state"} <= set(kinds), kinds
    said = [e["text"] for e in mine if e["type"] == "caller_turn"]
    assert any("[email]" in t for t in said) and not ADDRESS.search(str(mine).lower()), said
    ended = mine[-1]
    assert ended["outcome"] == "completed" and ended["ended_by"] == "caller", ended
    # Transcripts are logged in this suite: through the same redaction.
    turns = re.findall(rf"call {re.escape(room)}: caller turn: (.*)", line_stack.agent_log())
    assert turns and any("[email]" in t for t in turns), turns
    for secret in ("john", "smith", "example"):
        assert not any(secret in t.lower() for t in turns), turns
