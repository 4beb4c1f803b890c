"""Pre-rendered fallback messages, and the per-call player that speaks them.

A fallback message must play when the inference server cannot (killed, hung, overloaded), so
the worker renders every configured message once through the server's TTS, before it takes a
call, and keeps the PCM in a cache file keyed by the texts, voice and rate: a worker restarted
while the server is down still has them. Job processes load the file in ``prewarm``.

:class:`Announcer` publishes one extra audio track per call, silent until a message plays, so
playing one needs neither the session's TTS nor a track negotiation at the moment of a fault.
livekit-sip mixes every agent track into the caller's RTP.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
import logging
import os
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np
from livekit import rtc

from worker.agent.fault_metrics import fault_metrics
from worker.agent.plugins._client import InferenceClient
from worker.config.agent import AgentConfig, FallbackMessages

__all__ = ["Announcements", "Announcer", "cache_path", "ensure_rendered", "load_announcements"]

log = logging.getLogger("voicestack.agent")

_FRAME_MS = 20


@dataclass(frozen=True)
class Announcements:
    """Rendered messages: name (a :class:`FallbackMessages` field, or ``hold_music``) -> s16le
    mono PCM."""

    sample_rate: int
    pcm: dict[str, bytes]

    def __post_init__(self) -> None:
        self.pcm.setdefault("hold_music", hold_music(self.sample_rate))

    def duration_s(self, name: str) -> float:
        return len(self.pcm[name]) / 2 / self.sample_rate


def hold_music(rate: int, *, seconds: float = 2.0) -> bytes:
    """A soft two-note chime and a short rest (-24 dBFS, faded edges): what a caller on hold
    hears between messages, so a hold is never silence. Generated, not rendered: it needs no
    model and no file."""
    t = np.arange(int(rate * 0.45)) / rate
    fade = np.minimum(1.0, np.minimum(t, t[::-1]) / 0.05)
    amp = 32768 * 10 ** (-24 / 20)
    notes = [amp * fade * np.sin(2 * np.pi * f * t) for f in (523.25, 659.25)]
    rest = np.zeros(max(0, int(rate * seconds) - 2 * len(t)))
    return np.concatenate([*notes, rest]).astype(np.int16).tobytes()


def _texts(messages: FallbackMessages) -> dict[str, str]:
    return {name: str(text) for name, text in messages.model_dump().items()}


def cache_path(cfg: AgentConfig) -> Path:
    """The cache file for this config's messages, voice, rate and speed."""
    base = Path(
        cfg.fallback.cache_dir
        or os.path.join(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache", "voicestack")
    )
    key = json.dumps(
        [
            _texts(cfg.fallback.messages),
            cfg.persona.voice,
            cfg.persona.voice_sample_rate,
            cfg.persona.speaking_rate,
        ],
        sort_keys=True,
    )
    return base / f"announcements-{hashlib.sha256(key.encode()).hexdigest()[:16]}.npz"


def load_announcements(cfg: AgentConfig) -> Announcements:
    """Read the rendered messages; ``FileNotFoundError`` when the worker has not rendered them."""
    path = cache_path(cfg)
    with np.load(path) as data:
        rate = int(data["__sample_rate__"])
        pcm = {name: data[name].tobytes() for name in _texts(cfg.fallback.messages)}
    return Announcements(rate, pcm)


async def _render_one(client: InferenceClient, text: str, cfg: AgentConfig) -> bytes:
    stream = await client.open(
        {"op": "tts", "call_id": "voicestack-announcements", "speed": cfg.persona.speaking_rate}
    )
    audio = bytearray()
    async with stream:
        await stream.send_json({"type": "push_text", "text": text})
        await stream.send_json({"type": "end_input"})
        async for msg in stream.messages():
            if msg.audio is not None:
                audio += msg.audio
            elif msg.data and msg.data.get("type") == "audio_start":
                rate = int(msg.data.get("sample_rate", 0))
                if rate != cfg.persona.voice_sample_rate:
                    raise RuntimeError(
                        f"the server's voice is {rate} Hz, the config says "
                        f"{cfg.persona.voice_sample_rate} Hz"
                    )
            elif msg.data and msg.data.get("type") == "done":
                break
    if not audio:
        raise RuntimeError(f"the server rendered no audio for {text!r}")
    return bytes(audio)


async def ensure_rendered(cfg: AgentConfig, url: str, *, limit_s: float = 300.0) -> Path:
    """Render the fallback messages through the inference server at ``url`` unless the cache
    already holds them; retries until the server serves (up to ``limit_s``)."""
    path = cache_path(cfg)
    if path.is_file():
        try:
            load_announcements(cfg)
            return path
        except (OSError, KeyError, ValueError):
            log.warning("fallback audio cache %s is unreadable; rendering it again", path)
    deadline = time.monotonic() + limit_s
    client = InferenceClient(url, connect_timeout=5.0)
    try:
        while True:
            try:
                pcm = {
                    name: await _render_one(client, text, cfg)
                    for name, text in _texts(cfg.fallback.messages).items()
                }
                break
            except Exception as err:  # the server may still be loading: retry to the deadline
                if time.monotonic() > deadline:
                    raise RuntimeError(f"cannot render the fallback messages: {err}") from err
                log.info("fallback messages not rendered yet (%s); retrying", err)
                await asyncio.sleep(1.0)
    finally:
        await client.aclose()
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + f".{os.getpid()}.tmp.npz")
    arrays = {name: np.frombuffer(b, dtype=np.int16) for name, b in pcm.items()}
    np.savez(tmp, __sample_rate__=np.array(cfg.persona.voice_sample_rate), **arrays)  # type: ignore[arg-type]
    os.replace(tmp, path)
    total = sum(len(b) for b in pcm.values()) / 2 / cfg.persona.voice_sample_rate
    log.info("fallback messages rendered (%d, %.1f s of audio) into %s", len(pcm), total, path)
    return path


class Announcer:
    """Plays pre-rendered messages into one call's room on a track of its own.

    :meth:`start` publishes the (silent) track; :meth:`play` speaks one message and returns
    when it has been played out. One message at a time: a new one waits for the current.
    """

    def __init__(self, room: rtc.Room, announcements: Announcements) -> None:
        self._room = room
        self._ann = announcements
        self._source = rtc.AudioSource(announcements.sample_rate, 1, queue_size_ms=1000)
        self._lock = asyncio.Lock()
        self._published = False
        self.played: list[tuple[str, float]] = []
        """(message, monotonic start time) of every message played, for logs and tests."""

    async def start(self) -> None:
        """Publish the announcement track (idempotent)."""
        if self._published:
            return
        track = rtc.LocalAudioTrack.create_audio_track("voicestack-fallback", self._source)
        opts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        await self._room.local_participant.publish_track(track, opts)
        self._published = True

    async def play(self, name: str) -> None:
        """Speak the message ``name`` and wait until it has played out. Cancelling stops it
        at once (what was queued is dropped); shield a message that must be heard whole."""
        pcm = self._ann.pcm[name]
        rate = self._ann.sample_rate
        async with self._lock:
            await self.start()
            self.played.append((name, time.monotonic()))
            fault_metrics().messages.labels(message=name).inc()
            log.info("playing fallback message %r (%.1f s)", name, self._ann.duration_s(name))
            step = rate * _FRAME_MS // 1000
            samples = np.frombuffer(pcm, dtype=np.int16)
            try:
                for at in range(0, len(samples), step):
                    chunk = samples[at : at + step]
                    frame = rtc.AudioFrame(chunk.tobytes(), rate, 1, len(chunk))
                    await self._source.capture_frame(frame)
                await self._source.wait_for_playout()
            except asyncio.CancelledError:
                self._source.clear_queue()
                raise

    async def wait_idle(self) -> None:
        """Return once no message is playing."""
        async with self._lock:
            pass

    async def aclose(self) -> None:
        await self._source.aclose()
