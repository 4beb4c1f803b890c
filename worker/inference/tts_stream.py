"""The ``tts`` stream: text in (pushed as the LLM produces it), PCM out clause by clause.

Each complete clause is synthesized as soon as it is known, so the first audio does not wait
for the whole sentence. The first clause of a burst is critical work; later clauses are slack
(they have the playout time of the earlier audio).
"""

from __future__ import annotations

import asyncio
import re
import time
from dataclasses import dataclass

from worker.inference.clauses import first_chunk, split_clauses
from worker.inference.jobs import TtsAudio, TtsJob
from worker.inference.protocol import ErrorCode, StreamError, TtsStart, parse_control
from worker.inference.runtime import Overloaded, Work, WorkState
from worker.inference.scheduler import Stage
from worker.inference.stream_io import (
    ClientGone,
    StreamContext,
    await_terminal,
    cancel_and_wait,
)

__all__ = ["run_tts_stream"]

_CONTROL = frozenset({"push_text", "flush", "end_input", "cancel"})
_CHUNK_S = 0.1  # audio frame length sent to the client


_UNSPEAKABLE = re.compile(r"[\x01-\x08\x0b-\x1f\x7f-\x9f]")


@dataclass(frozen=True)
class _Clause:
    segment: int
    text: str
    queued_at: float


class _TtsStream:
    def __init__(self, ctx: StreamContext, start: TtsStart) -> None:
        self.ctx = ctx
        self.start = start
        self.pending = ""  # pushed text without a clause end yet
        self.queued_chars = 0  # text in clauses not yet spoken
        self.max_chars = ctx.config.limits.max_tts_pending_chars
        self.segment = 0
        # Bounded by max_chars too: every clause holds at least one character.
        self.clauses: asyncio.Queue[_Clause | None] = asyncio.Queue(maxsize=self.max_chars + 1)
        self.work: Work[TtsJob, TtsAudio] | None = None
        self.first_words = ctx.config.tts.first_chunk_words

    def _enqueue(self, clauses: list[str]) -> None:
        for text in clauses:
            self.clauses.put_nowait(_Clause(self.segment, text, time.monotonic()))
            self.queued_chars += len(text)
            self.segment += 1

    def push(self, text: str, *, final: bool) -> None:
        # Piper reads characters, not bytes of intent: control characters become spaces
        # (NUL and lone surrogates were refused as bad_request by the protocol).
        text = _UNSPEAKABLE.sub(" ", text)
        if len(self.pending) + len(text) + self.queued_chars > self.max_chars:
            raise StreamError(
                ErrorCode.PAYLOAD_TOO_LARGE,
                f"more than {self.max_chars} characters of text waiting to be spoken",
            )
        text = self.pending + text
        first: list[str] = []
        if self.segment == 0 and self.first_words:
            # Nothing spoken yet: a short first chunk gets the caller audio sooner; the
            # rest follows while it plays.
            cut = first_chunk(text, self.first_words)
            if cut is not None:
                first, text = [cut[0]], cut[1]
        clauses, self.pending = split_clauses(text, final=final)
        self._enqueue(first + clauses)

    async def read_loop(self) -> None:
        """Runs until the stream ends; only ever returns by raising (after end_input it still
        watches for cancel or a vanished client)."""
        ended = False
        while True:
            frame = await self.ctx.receive()
            if frame is None:
                raise ClientGone("client closed the stream")
            if isinstance(frame, bytes):
                raise StreamError(ErrorCode.BAD_REQUEST, "a tts stream takes no binary frames")
            msg = parse_control(frame, _CONTROL)
            kind = msg["type"]
            if kind == "cancel":
                raise ClientGone("client cancelled the stream")
            if ended:
                raise StreamError(ErrorCode.BAD_REQUEST, f"{kind} after end_input")
            if kind == "push_text":
                self.push(msg["text"], final=False)
            elif kind == "flush":
                self.push("", final=True)
            else:  # end_input
                self.push("", final=True)
                self.clauses.put_nowait(None)
                ended = True

    async def speak_loop(self) -> None:
        while (clause := await self.clauses.get()) is not None:
            # Critical when nothing else is queued behind it: the listener is waiting for it.
            critical = clause.segment == 0 or self.clauses.empty()
            engines = self.ctx.engines
            call_id = self.start.call_id
            deadline: float | None
            if clause.segment == 0:
                stage, deadline = Stage.TTS_FIRST, None
            else:
                # Later clauses have the playout of the audio already sent as slack, and are
                # never due before the clauses ahead of them can have been heard.
                stage = Stage.TTS_REST
                before = self.queued_chars - len(clause.text)
                deadline = engines.clock.clause_deadline(call_id, time.monotonic(), before)
            try:
                work = engines.tts.submit(
                    TtsJob(clause.text, self.start.speed),
                    stream_id=self.ctx.stream_id,
                    critical=critical,
                    call_id=call_id,
                    stage=stage,
                    deadline=deadline,
                    units=float(len(clause.text)),
                )
            except Overloaded as err:
                raise StreamError(ErrorCode.OVERLOADED, str(err)) from None
            self.work = work
            try:
                event = await await_terminal(work, "tts")
            finally:
                self.work = None
            if event.state != WorkState.FINISHED or event.result is None:
                return
            audio = event.result
            engines.clock.audio_sent(
                call_id, time.monotonic(), len(audio.samples) / max(1, audio.sample_rate)
            )
            await self.ctx.send_json(
                {
                    "type": "audio_start",
                    "segment": clause.segment,
                    "sample_rate": audio.sample_rate,
                    "text": clause.text,
                }
            )
            step = max(1, int(audio.sample_rate * _CHUNK_S))
            pcm = audio.samples.astype("<i2", copy=False)
            for offset in range(0, len(pcm), step):
                await self.ctx.send_bytes(pcm[offset : offset + step].tobytes())
                if offset == 0:
                    self.ctx.observe_stage("tts_first_audio", clause.queued_at)
            await self.ctx.send_json({"type": "audio_end", "segment": clause.segment})
            self.queued_chars -= len(clause.text)


async def run_tts_stream(ctx: StreamContext, start: TtsStart) -> None:
    """Serve one TTS stream until ``done``, cancellation or an error."""
    stream = _TtsStream(ctx, start)
    speaker = asyncio.create_task(stream.speak_loop(), name=f"tts-speak-{ctx.stream_id}")
    reader = asyncio.create_task(stream.read_loop(), name=f"tts-read-{ctx.stream_id}")
    try:
        done, _ = await asyncio.wait({speaker, reader}, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            task.result()  # the reader only ends by raising; the speaker by end_input or error
        await ctx.send_json({"type": "done"})
    finally:
        if stream.work is not None:
            stream.work.cancel()
        await cancel_and_wait(speaker, reader)
