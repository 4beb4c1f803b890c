"""One synthetic caller: speaks its planned utterances in real time, waits for the agent's
answer, listens to it for as long as it would play, pauses, and speaks again.

Each turn follows the agent's critical path against the inference server (one STT stream per
call, one LLM and one TTS stream per turn) and records the stage timestamps defined in
:mod:`worker.bench.results`. A refusal (``overloaded``) or an error ends the turn, is recorded,
and the caller goes on with its next turn after the planned pause; nothing is retried.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import aiohttp

from worker.bench.results import Outcome, TurnRecord
from worker.bench.timeline import CallPlan, TurnPlan
from worker.bench.utterances import SAMPLE_RATE, Utterance
from worker.bench.wsclient import ServerStream, StreamError
from worker.inference.clauses import split_clauses

__all__ = ["CallSettings", "first_clause_ready", "run_call"]

Clock = Callable[[], float]

_MAX_CLAUSE_WORDS = 12


def first_clause_ready(text: str) -> str | None:
    """Whether a streamed reply holds a complete first clause yet.

    Returns ``"clause"`` when the server's own clause splitter (the one its TTS stream applies
    to pushed text) finds a complete clause, so pushing the text starts synthesis by itself;
    ``"flush"`` when more than 12 words arrived without a clause end, so the caller pushes
    and then flushes, as an agent bounds its wait for punctuation; ``None`` otherwise.
    """
    clauses, _ = split_clauses(text)
    if clauses:
        return "clause"
    if len(text.split()) > _MAX_CLAUSE_WORDS:
        return "flush"
    return None


@dataclass(frozen=True)
class CallSettings:
    """How synthetic calls talk to the server; the same for every call of a run."""

    url: str
    """``ws://host:port/v1/stream``."""
    system_prompt: str = (
        "You are a friendly call-center agent on the phone. Answer in one or two short sentences."
    )
    max_tokens: int = 40
    temperature: float = 0.7
    history_turns: int = 2
    """Earlier exchanges kept in the prompt (user + assistant per exchange)."""
    frame_ms: int = 20
    interim: bool = True
    turn_timeout_s: float = 60.0


async def _stop(task: asyncio.Task[None]) -> None:
    """Cancel a stream's reader task and wait for it to end. ``asyncio.wait`` never raises the
    task's own outcome, while a cancellation of *our* task still propagates out of it."""
    task.cancel()
    await asyncio.wait({task})
    if not task.cancelled():
        task.exception()  # mark a failure as retrieved; the turn already reported it


class _SttSession:
    """The call's STT stream, opened on first use and reopened after a failure."""

    def __init__(self, stream: ServerStream) -> None:
        self._stream = stream
        self._finals: asyncio.Queue[dict[str, Any] | StreamError] = asyncio.Queue(maxsize=4)
        self._error: StreamError | None = None
        self._reader = asyncio.create_task(self._read())
        self.interims = 0

    async def _read(self) -> None:
        try:
            while True:
                event = await self._stream.recv()
                if isinstance(event, bytes):
                    raise StreamError("protocol", "binary frame on an stt stream")
                if event.get("type") == "final":
                    await self._finals.put(event)
                elif event.get("type") == "interim":
                    self.interims += 1
        except StreamError as err:
            self._error = err
            await self._finals.put(err)

    def _failure(self, fallback: StreamError) -> StreamError:
        # A send fails because the server closed the socket; the reason (e.g. a refusal)
        # arrived as an error frame just before, so report that rather than "closed".
        return self._error or fallback

    async def speak(self, pcm: bytes, frame_ms: int, clock: Clock) -> None:
        """Stream ``pcm`` in real time: frame k leaves at start + k * frame_ms on the wall
        clock (absolute schedule, so sleeps that overshoot do not accumulate), then wait until
        the audio's duration has elapsed, as a live caller's would."""
        frame_bytes = SAMPLE_RATE * frame_ms // 1000 * 2
        step = frame_ms / 1000
        start = clock()
        for k, offset in enumerate(range(0, len(pcm), frame_bytes)):
            delay = start + k * step - clock()
            if delay > 0:
                await asyncio.sleep(delay)
            if self._error is not None:
                raise self._error
            try:
                await self._stream.send_bytes(pcm[offset : offset + frame_bytes])
            except StreamError as err:
                raise self._failure(err) from None
        remaining = start + len(pcm) / 2 / SAMPLE_RATE - clock()
        if remaining > 0:
            await asyncio.sleep(remaining)
        if self._error is not None:
            raise self._error

    async def flush(self) -> None:
        try:
            await self._stream.send_json({"type": "flush"})
        except StreamError as err:
            raise self._failure(err) from None

    async def final(self) -> dict[str, Any]:
        item = await self._finals.get()
        if isinstance(item, StreamError):
            raise item
        return item

    async def aclose(self) -> None:
        await _stop(self._reader)
        await self._stream.aclose()


class _TtsListener:
    """A TTS stream plus the task that receives its audio and notes when the first frame came."""

    def __init__(self, stream: ServerStream, clock: Clock) -> None:
        self._stream = stream
        self._clock = clock
        self.first_audio_at: float | None = None
        self.samples = 0
        self.sample_rate: int | None = None
        self._error: StreamError | None = None
        self._reader = asyncio.create_task(self._read())

    async def _read(self) -> None:
        try:
            while True:
                event = await self._stream.recv()
                if isinstance(event, bytes):
                    if self.sample_rate is None:
                        raise StreamError("protocol", "audio before audio_start on a tts stream")
                    if self.first_audio_at is None:
                        self.first_audio_at = self._clock()
                    self.samples += len(event) // 2
                elif event.get("type") == "audio_start":
                    rate = event.get("sample_rate")
                    if not isinstance(rate, int) or rate <= 0:
                        raise StreamError("protocol", f"audio_start with sample_rate {rate!r}")
                    self.sample_rate = rate
                elif event.get("type") == "done":
                    return
        except StreamError as err:
            self._error = err
            raise

    async def push(self, text: str) -> None:
        try:
            await self._stream.send_json({"type": "push_text", "text": text})
        except StreamError:
            raise self._error or StreamError("closed", "tts stream closed") from None

    async def send(self, verb: str) -> None:
        try:
            await self._stream.send_json({"type": verb})
        except StreamError:
            raise self._error or StreamError("closed", "tts stream closed") from None

    async def done(self) -> None:
        """Wait for the server's ``done``; raises the stream's error if it failed."""
        await self._reader

    @property
    def audio_s(self) -> float:
        return self.samples / self.sample_rate if self.sample_rate else 0.0

    async def aclose(self) -> None:
        await _stop(self._reader)
        await self._stream.aclose()


class _Call:
    def __init__(
        self,
        session: aiohttp.ClientSession,
        plan: CallPlan,
        utterances: Sequence[Utterance],
        settings: CallSettings,
        clock: Clock,
        call_id: str,
    ) -> None:
        self.session = session
        self.plan = plan
        self.utterances = utterances
        self.s = settings
        self.clock = clock
        self.call_id = call_id
        self.stt: _SttSession | None = None
        self.history: list[dict[str, str]] = []
        self.stage = "stt"

    async def _open_stt(self) -> _SttSession:
        if self.stt is None:
            start = {
                "op": "stt",
                "call_id": self.call_id,
                "sample_rate": SAMPLE_RATE,
                "language": "en",
                "interim": self.s.interim,
            }
            self.stt = _SttSession(await ServerStream.open(self.session, self.s.url, start))
        return self.stt

    async def _drop_stt(self) -> None:
        if self.stt is not None:
            stt, self.stt = self.stt, None
            await stt.aclose()

    async def turn(self, rec: TurnRecord, tp: TurnPlan) -> float:
        """Run one turn, filling ``rec``; returns the time the answer finishes playing."""
        utt = self.utterances[tp.utterance]
        self.stage = "stt"
        stt = await self._open_stt()
        await stt.speak(utt.pcm, self.s.frame_ms, self.clock)
        await stt.flush()
        t0 = self.clock()  # the end-of-turn decision
        final = await stt.final()
        t_final = self.clock()
        rec.stages_ms["stt_final"] = (t_final - t0) * 1000
        rec.transcript = str(final.get("text", "")).strip()
        if not rec.transcript:
            # The caller said a full sentence of clean speech: hearing nothing is a failure
            # (e.g. audio dropped under load), and an agent would not answer at all.
            raise StreamError("empty_transcript", "the final transcript of a spoken turn is empty")

        self.stage = "llm"
        messages = [{"role": "system", "content": self.s.system_prompt}]
        messages += self.history[-2 * self.s.history_turns :] if self.s.history_turns else []
        messages.append({"role": "user", "content": rec.transcript})
        start = {
            "op": "llm",
            "call_id": self.call_id,
            "messages": messages,
            "max_tokens": self.s.max_tokens,
            "temperature": self.s.temperature,
            "seed": self.plan.call_index * 1000 + rec.turn_index,
        }
        t_llm = self.clock()
        llm = await ServerStream.open(self.session, self.s.url, start)
        tts: _TtsListener | None = None
        t_tts = 0.0
        reply = ""
        try:
            while True:
                event = await llm.recv()
                if isinstance(event, bytes):
                    raise StreamError("protocol", "binary frame on an llm stream")
                kind = event.get("type")
                if kind == "done":
                    break
                if kind != "token":
                    continue
                piece = str(event.get("text", ""))
                if "llm_ttft" not in rec.stages_ms:
                    rec.stages_ms["llm_ttft"] = (self.clock() - t_llm) * 1000
                reply += piece
                if tts is not None:
                    self.stage = "tts"
                    await tts.push(piece)
                    self.stage = "llm"
                    continue
                ready = first_clause_ready(reply)
                if ready is None:
                    continue
                rec.stages_ms["llm_clause"] = (self.clock() - t_llm) * 1000
                self.stage = "tts"
                t_tts = self.clock()
                tts = await self._open_tts()
                await tts.push(reply)
                if ready == "flush":
                    await tts.send("flush")
                self.stage = "llm"
        except BaseException:
            if tts is not None:
                await tts.aclose()
            raise
        finally:
            await llm.aclose()
        rec.reply = reply
        if not reply.strip():
            raise StreamError("empty_reply", "the LLM returned no text")

        self.stage = "tts"
        try:
            if tts is None:  # the whole reply was one clause without punctuation
                rec.stages_ms["llm_clause"] = (self.clock() - t_llm) * 1000
                t_tts = self.clock()
                tts = await self._open_tts()
                await tts.push(reply)
            await tts.send("end_input")
            await tts.done()
        finally:
            if tts is not None:
                await tts.aclose()
        if tts.first_audio_at is None:
            raise StreamError("no_audio", "the TTS stream ended without audio")
        rec.stages_ms["tts_ttfb"] = (tts.first_audio_at - t_tts) * 1000
        rec.stages_ms["compute"] = (tts.first_audio_at - t0) * 1000
        rec.answer_audio_s = tts.audio_s
        self.history += [
            {"role": "user", "content": rec.transcript},
            {"role": "assistant", "content": reply},
        ]
        return tts.first_audio_at + tts.audio_s

    async def _open_tts(self) -> _TtsListener:
        start = {"op": "tts", "call_id": self.call_id, "speed": 1.0}
        return _TtsListener(await ServerStream.open(self.session, self.s.url, start), self.clock)


async def run_call(
    session: aiohttp.ClientSession,
    plan: CallPlan,
    utterances: Sequence[Utterance],
    settings: CallSettings,
    *,
    start_at: float,
    deadline: float,
    sink: list[TurnRecord],
    clock: Clock = time.monotonic,
    call_prefix: str = "bench",
) -> None:
    """Run one synthetic call from ``start_at`` (on ``clock``); no turn starts after
    ``deadline``. Each finished turn's record is appended to ``sink``."""
    call = _Call(session, plan, utterances, settings, clock, f"{call_prefix}-{plan.call_index}")
    try:
        delay = start_at - clock()
        if delay > 0:
            await asyncio.sleep(delay)
        for turn_index, tp in enumerate(plan.turns):
            if clock() >= deadline:
                break
            rec = TurnRecord(
                call_index=plan.call_index,
                turn_index=turn_index,
                utterance_s=utterances[tp.utterance].duration_s,
            )
            resume_at = clock()
            try:
                async with asyncio.timeout(settings.turn_timeout_s):
                    resume_at = await call.turn(rec, tp)
            except StreamError as err:
                outcome = Outcome.REFUSED if err.refused else Outcome.ERROR
                rec.fail(outcome, call.stage, err.code, err.message)
                if call.stage == "stt":
                    await call._drop_stt()
                resume_at = clock()
            except TimeoutError:
                rec.fail(
                    Outcome.ERROR,
                    call.stage,
                    "timeout",
                    f"turn exceeded {settings.turn_timeout_s} s",
                )
                await call._drop_stt()  # its state is unknown; start the next turn afresh
                resume_at = clock()
            sink.append(rec)
            delay = resume_at + tp.pause_after_s - clock()
            if delay > 0:
                await asyncio.sleep(delay)
    finally:
        await call._drop_stt()
