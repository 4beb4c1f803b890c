"""The ``stt`` stream: audio in while the caller speaks, interim transcripts out, a final
transcript per flush.

Interims are slack work and coalesced: at most one in flight per stream, at most one per
``interim_interval_ms``, always on the newest audio; a result for an utterance that has been
flushed since is dropped (by segment identity, not by timing). Finals are critical work and are
sent in order by one task, while the reader keeps receiving the next utterance's audio.

Clients stream all call audio, silence included, and flush only at the end of speech, so a
caller on hold can send minutes of audio without a flush. The buffer is a window: it keeps the
newest ``limits.max_utterance_s`` of unflushed audio and drops the oldest (counted in
``voicestack_inference_stt_audio_dropped_seconds_total``, logged once per segment).

A stream started with ``words`` gets word timings in each final (relative to that final's
audio); only finals ask the engine for them, so interims cost what they always did.
"""

from __future__ import annotations

import asyncio
import logging
import time
from dataclasses import dataclass

from worker.inference.jobs import SttJob, SttResult, SttWords
from worker.inference.protocol import ErrorCode, StreamError, SttStart, parse_control
from worker.inference.runtime import Overloaded, Work, WorkState
from worker.inference.scheduler import Stage
from worker.inference.stream_io import (
    ClientGone,
    StreamContext,
    await_terminal,
    cancel_and_wait,
)
from worker.inference.words import Word, words_to_wire

__all__ = ["run_stt_stream"]

log = logging.getLogger(__name__)

_CONTROL = frozenset({"flush", "end_input", "cancel"})
_BYTES_PER_S = 16_000 * 2
_MIN_INTERIM_BYTES = _BYTES_PER_S // 4  # Whisper says little useful about < 250 ms
_MAX_PENDING_FINALS = 4


@dataclass(frozen=True)
class _Final:
    segment: int
    pcm: bytes
    flushed_at: float


class _SttStream:
    def __init__(self, ctx: StreamContext, start: SttStart) -> None:
        self.ctx = ctx
        self.start = start
        self.buffer = bytearray()
        self.segment = 0  # index of the utterance being received
        # Whole 16-bit samples, so dropping the oldest bytes keeps the buffer sample-aligned.
        self.max_bytes = int(ctx.config.limits.max_utterance_s * _BYTES_PER_S) & ~1
        self.dropped_logged = False  # the current segment has logged its first drop
        self.interval_s = ctx.config.stt.interim_interval_ms / 1000
        self.last_interim_at = 0.0
        self.interim_bytes = 0  # buffer length the last interim covered
        self.interim_task: asyncio.Task[None] | None = None
        self.interim_work: Work[SttJob, SttResult] | None = None
        self.finals: asyncio.Queue[_Final | None] = asyncio.Queue(maxsize=_MAX_PENDING_FINALS)
        self.final_work: Work[SttJob, SttResult] | None = None

    # -- interims ---------------------------------------------------------------------------
    def maybe_interim(self) -> None:
        if not self.start.interim or self.interim_task is not None:
            return  # coalescing: the one in flight will be followed by a newer one
        now = time.monotonic()
        if now - self.last_interim_at < self.interval_s:
            return
        if len(self.buffer) < _MIN_INTERIM_BYTES or len(self.buffer) == self.interim_bytes:
            return
        try:
            work = self.ctx.engines.stt.submit(
                SttJob(bytes(self.buffer), self.start.language),
                stream_id=self.ctx.stream_id,
                critical=False,
                call_id=self.start.call_id,
                stage=Stage.STT_INTERIM,
                units=len(self.buffer) / _BYTES_PER_S,
                coalesce_key=self.ctx.stream_id,
            )
        except Overloaded:
            return  # interims are optional: skip under load
        self.last_interim_at = now
        self.interim_bytes = len(self.buffer)
        self.interim_work = work
        self.interim_task = asyncio.create_task(self._interim(work, self.segment, len(self.buffer)))

    async def _interim(self, work: Work[SttJob, SttResult], segment: int, nbytes: int) -> None:
        try:
            event = await work.wait()
            if event.state == WorkState.FINISHED and segment == self.segment:
                text, _ = _text_and_words(event.result)
                await self.ctx.send_json({"type": "interim", "text": text, "audio_ms": _ms(nbytes)})
            elif event.state == WorkState.FAILED:
                log.warning("interim transcription failed: %s", event.error)
        except ClientGone:
            pass  # the reader sees the closed socket and ends the stream
        finally:
            work.cancel()
            self.interim_task = None
            self.interim_work = None

    def drop_interim(self) -> None:
        """The utterance was flushed: its pending interim is stale."""
        if self.interim_work is not None:
            self.interim_work.cancel()

    # -- finals -----------------------------------------------------------------------------
    def flush(self) -> None:
        self.drop_interim()
        item = _Final(self.segment, bytes(self.buffer), time.monotonic())
        try:
            self.finals.put_nowait(item)
        except asyncio.QueueFull:
            raise StreamError(
                ErrorCode.OVERLOADED, f"more than {_MAX_PENDING_FINALS} flushes pending"
            ) from None
        self.segment += 1
        self.buffer.clear()
        self.interim_bytes = 0
        self.dropped_logged = False

    async def final_loop(self) -> None:
        while (item := await self.finals.get()) is not None:
            text = ""
            words: tuple[Word, ...] = ()
            if item.pcm:
                try:
                    work = self.ctx.engines.stt.submit(
                        SttJob(item.pcm, self.start.language, words=self.start.words),
                        stream_id=self.ctx.stream_id,
                        critical=True,
                        call_id=self.start.call_id,
                        stage=Stage.STT_FINAL,
                        turn_end=item.flushed_at,  # the flush is the caller's end of turn
                        units=len(item.pcm) / _BYTES_PER_S,
                        coalesce_key=self.ctx.stream_id,
                    )
                except Overloaded as err:
                    raise StreamError(ErrorCode.OVERLOADED, str(err)) from None
                self.final_work = work
                try:
                    event = await await_terminal(work, "stt")
                finally:
                    self.final_work = None
                text, words = _text_and_words(event.result)
            frame: dict[str, object] = {
                "type": "final",
                "text": text,
                "audio_ms": _ms(len(item.pcm)),
                "segment": item.segment,
            }
            if self.start.words:
                frame["words"] = words_to_wire(words)
            await self.ctx.send_json(frame)
            self.ctx.observe_stage("stt_final", item.flushed_at)

    # -- input ------------------------------------------------------------------------------
    def append(self, frame: bytes) -> None:
        """Add audio, keeping only the newest ``max_bytes`` of the unflushed utterance."""
        excess = len(self.buffer) + len(frame) - self.max_bytes
        if excess <= 0:
            self.buffer += frame
            return
        if excess >= len(self.buffer):  # the frame alone fills the window
            self.buffer[:] = frame[len(frame) - self.max_bytes :]
        else:
            del self.buffer[:excess]
            self.buffer += frame
        # The window moved while its length stayed put: a newer interim is worth computing.
        self.interim_bytes = 0
        self.ctx.metrics.stt_audio_dropped.inc(excess / _BYTES_PER_S)
        if not self.dropped_logged:
            self.dropped_logged = True
            log.info(
                "stt stream %s (call %s), segment %d: more than %g s without a flush; "
                "keeping the newest %g s and dropping older audio",
                self.ctx.stream_id,
                self.start.call_id,
                self.segment,
                self.ctx.config.limits.max_utterance_s,
                self.max_bytes / _BYTES_PER_S,
            )

    async def read_loop(self) -> None:
        """Runs until the stream ends; only ever returns by raising (after end_input it still
        watches for cancel or a vanished client)."""
        ended = False
        while True:
            frame = await self.ctx.receive()
            if frame is None:
                raise ClientGone("client closed the stream")
            if isinstance(frame, bytes):
                if ended:
                    raise StreamError(ErrorCode.BAD_REQUEST, "audio after end_input")
                if len(frame) % 2:
                    raise StreamError(ErrorCode.BAD_REQUEST, "audio frames are 16-bit PCM")
                self.append(frame)
                self.maybe_interim()
                continue
            kind = parse_control(frame, _CONTROL)["type"]
            if kind == "cancel":
                raise ClientGone("client cancelled the stream")
            if ended:
                raise StreamError(ErrorCode.BAD_REQUEST, f"{kind} after end_input")
            if kind == "flush":
                self.flush()
            else:  # end_input
                if self.buffer:
                    self.flush()
                await self.finals.put(None)
                ended = True

    def cancel_all(self) -> None:
        for work in (self.interim_work, self.final_work):
            if work is not None:
                work.cancel()


def _text_and_words(result: SttResult | None) -> tuple[str, tuple[Word, ...]]:
    if isinstance(result, SttWords):
        return result.text, result.words
    return result or "", ()


def _ms(nbytes: int) -> int:
    return nbytes * 1000 // _BYTES_PER_S


async def run_stt_stream(ctx: StreamContext, start: SttStart) -> None:
    """Serve one STT stream until ``done``, cancellation or an error."""
    languages = ctx.engines.stt_languages
    if start.language is not None and start.language not in languages:
        raise StreamError(
            ErrorCode.BAD_REQUEST,
            f"language {start.language!r} is not supported by the server's STT model "
            f"(supported: {', '.join(sorted(languages))})",
        )
    stream = _SttStream(ctx, start)
    finals = asyncio.create_task(stream.final_loop(), name=f"stt-finals-{ctx.stream_id}")
    reader = asyncio.create_task(stream.read_loop(), name=f"stt-read-{ctx.stream_id}")
    try:
        done, _ = await asyncio.wait({finals, reader}, return_when=asyncio.FIRST_COMPLETED)
        # Either one failed (protocol error, engine failure, client gone), or end_input was
        # read and every pending final has been sent (the reader only ends by raising).
        for task in done:
            task.result()
        await ctx.send_json({"type": "done"})
    finally:
        stream.cancel_all()
        tasks = [finals, reader]
        if stream.interim_task is not None:
            tasks.append(stream.interim_task)
        await cancel_and_wait(*tasks)
