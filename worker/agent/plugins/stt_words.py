"""Word timings of a recorded clip from the inference server's ``stt`` stream (``words`` on).

Post-call work (finding where redacted words were spoken, to silence them in the recording):
never on a live call's critical path. The protocol has no priority field; what this client can
do to let live calls go first is ask for nothing live calls pay for (no interims, one flush)
and, when the server refuses a new call for load (``overloaded``/``not_ready``), back off and
ask again within its deadline instead of pressing.
"""

from __future__ import annotations

import asyncio
import logging

import numpy as np
from livekit.agents import APIConnectionError, APIError, APITimeoutError

from worker.inference.words import Word, words_from_wire

from ._audio import split_pcm
from ._client import InferenceClient, InferenceStream, ServerError

__all__ = ["MAX_CLIP_S", "TranscriptionError", "Word", "transcribe_words"]

logger = logging.getLogger(__name__)

_RATE = 16_000  # the protocol's v1 STT input rate
MAX_CLIP_S = 30.0
"""Longest clip (Whisper's window, the server's default ``max_utterance_s``): a longer one
would be cut by the server, so the caller splits it (e.g. by speech segments) instead."""
_RETRY_CODES = frozenset({"overloaded", "not_ready"})
_FIRST_BACKOFF_S = 0.5
_MAX_BACKOFF_S = 5.0


class TranscriptionError(Exception):
    """No word timings: the server is unreachable, refused, failed or ran out of time.

    ``code`` is the protocol's error code when the server sent one (``overloaded``...),
    ``"timeout"`` for the deadline, ``"connection"`` for an unreachable server, else None.
    """

    def __init__(self, message: str, code: str | None = None) -> None:
        super().__init__(message)
        self.code = code


async def transcribe_words(
    url: str,
    samples: np.ndarray,
    rate: int,
    *,
    call_id: str,
    timeout_s: float = 30.0,
) -> tuple[str, tuple[Word, ...]]:
    """Transcribe ``samples`` (mono, int16 PCM or float in [-1, 1], at ``rate`` Hz) with one
    STT stream and return ``(text, words)``; word times are seconds from the start of
    ``samples``.

    ``timeout_s`` bounds everything (connecting, retries after a refusal, the transcription).
    Raises :class:`TranscriptionError` (server down, refused, failed, timed out, or a clip
    longer than :data:`MAX_CLIP_S`) and ``ValueError`` for malformed input. The stream is
    closed on every path, cancellation included, which frees its server slot.
    """
    pcm = _to_pcm16(samples, rate)
    if len(pcm) > MAX_CLIP_S * _RATE * 2:
        raise TranscriptionError(
            f"clip of {len(pcm) / (_RATE * 2):.1f} s is longer than {MAX_CLIP_S:g} s; split it"
        )
    if timeout_s <= 0:
        raise ValueError(f"timeout_s must be > 0, got {timeout_s}")
    client = InferenceClient(url)
    try:
        async with asyncio.timeout(timeout_s):
            return await _with_retries(client, pcm, call_id)
    except TimeoutError:
        raise TranscriptionError(
            f"no transcript from {url} within {timeout_s:g} s", code="timeout"
        ) from None
    finally:
        # Shielded so that a cancelled caller still closes the HTTP session.
        await asyncio.shield(client.aclose())


async def _with_retries(
    client: InferenceClient, pcm: bytes, call_id: str
) -> tuple[str, tuple[Word, ...]]:
    delay = _FIRST_BACKOFF_S
    while True:
        try:
            return await _transcribe_once(client, pcm, call_id)
        except ServerError as err:
            if err.code not in _RETRY_CODES:
                raise TranscriptionError(str(err), code=err.code) from err
            # A busy server refuses a new call at once: live calls come first, so wait (the
            # enclosing deadline bounds this loop).
            logger.info("word timings refused (%s); retrying in %.1f s", err.code, delay)
            await asyncio.sleep(delay)
            delay = min(delay * 2, _MAX_BACKOFF_S)
        except APITimeoutError as err:
            raise TranscriptionError(str(err), code="timeout") from err
        except APIConnectionError as err:
            raise TranscriptionError(str(err), code="connection") from err
        except APIError as err:
            raise TranscriptionError(str(err)) from err


async def _transcribe_once(
    client: InferenceClient, pcm: bytes, call_id: str
) -> tuple[str, tuple[Word, ...]]:
    start = {
        "op": "stt",
        "call_id": call_id,
        "sample_rate": _RATE,
        "interim": False,
        "words": True,
    }
    stream = await client.open(start)
    async with stream:  # closes (shielded) on every exit: the server drops the work
        for chunk in split_pcm(pcm, sample_rate=_RATE):
            await stream.send_audio(chunk)
        # An explicit flush always yields one final, even for an empty clip.
        await stream.send_json({"type": "flush"})
        await stream.send_json({"type": "end_input"})
        return await _read_final(stream, len(pcm))


async def _read_final(stream: InferenceStream, nbytes: int) -> tuple[str, tuple[Word, ...]]:
    result: tuple[str, tuple[Word, ...]] | None = None
    async for msg in stream.messages():
        data = msg.data
        if data is None:
            continue
        kind = data.get("type")
        if kind == "final" and result is None:
            sent_ms = nbytes * 1000 // (_RATE * 2)
            if int(data.get("audio_ms", sent_ms)) < sent_ms:
                # The server kept only its newest max_utterance_s: times would be shifted.
                raise TranscriptionError(
                    f"the server transcribed {data.get('audio_ms')} ms of a {sent_ms} ms clip"
                )
            try:
                words = words_from_wire(data.get("words"))
            except ValueError as err:
                raise TranscriptionError(f"malformed word timings from the server: {err}") from err
            result = (str(data.get("text", "")).strip(), words)
        elif kind == "done":
            if result is None:
                raise TranscriptionError("the server ended the STT stream without a final")
            return result
    raise TranscriptionError("the server closed the STT stream before 'done'")


def _to_pcm16(samples: np.ndarray, rate: int) -> bytes:
    """Mono samples at ``rate`` -> s16le at 16 kHz (linear interpolation: keeps time zero
    where it is, unlike a filtering resampler with its delay)."""
    if rate <= 0:
        raise ValueError(f"rate must be > 0, got {rate}")
    x = np.asarray(samples)
    if x.ndim != 1:
        raise ValueError(f"expected mono 1-D samples, got shape {x.shape}")
    if np.issubdtype(x.dtype, np.integer):
        values = x.astype(np.float64) / 32768.0
    elif np.issubdtype(x.dtype, np.floating):
        values = x.astype(np.float64)
        if not np.isfinite(values).all():
            raise ValueError("samples contain NaN or infinite values")
    else:
        raise ValueError(f"expected int16 or float samples, got dtype {x.dtype}")
    if rate != _RATE and values.size:
        n_out = round(values.size * _RATE / rate)
        values = np.interp(np.arange(n_out) / _RATE, np.arange(values.size) / rate, values)
    out = np.clip(np.round(values * 32768.0), -32768, 32767).astype("<i2")
    return out.tobytes()
