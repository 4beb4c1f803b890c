"""WebRTC caller: a participant joins a fresh room through the livekit rtc SDK, dispatches our
named agent into it (explicit dispatch, as a SIP dispatch rule with ``room_config.agents``
would), publishes the caller WAV as its microphone and records the agent's audio.

Clock: t=0 is the moment the agent's audio track is subscribed (the agent "answered"); playback
starts then, and every received frame is placed on the recording at its arrival time relative
to t=0, so the recording and the play schedule share one time base.
"""

from __future__ import annotations

import asyncio
import logging
import time
import uuid

import numpy as np
from livekit import api, rtc

from worker.caller.audio import Pcm, read_wav
from worker.caller.transport import CallRecording, HangUp
from worker.caller.utterances import CallerScript

__all__ = ["WebRTCCaller"]

logger = logging.getLogger("voicestack.caller")

FRAME_MS = 10
SPEECH_DBFS = -42.0


class WebRTCCaller:
    """A scripted caller over WebRTC (no SIP in the path)."""

    name = "webrtc"

    def __init__(
        self,
        *,
        ws_url: str,
        api_key: str,
        api_secret: str,
        agent_name: str,
        answer_timeout_s: float = 30.0,
        tail_s: float = 1.0,
    ) -> None:
        self._ws_url = ws_url
        self._http_url = ws_url.replace("ws://", "http://").replace("wss://", "https://")
        self._key = api_key
        self._secret = api_secret
        self._agent_name = agent_name
        self._answer_timeout_s = answer_timeout_s
        self._tail_s = tail_s

    async def call(self, script: CallerScript, *, hang_up: HangUp | None = None) -> CallRecording:
        room_name = f"call-webrtc-{uuid.uuid4().hex[:8]}"
        lkapi = api.LiveKitAPI(url=self._http_url, api_key=self._key, api_secret=self._secret)
        room = rtc.Room()
        try:
            await lkapi.room.create_room(api.CreateRoomRequest(name=room_name, empty_timeout=30))
            await lkapi.agent_dispatch.create_dispatch(
                api.CreateAgentDispatchRequest(agent_name=self._agent_name, room=room_name)
            )
            return await self._run(room, room_name, script, hang_up)
        finally:
            await room.disconnect()
            await lkapi.aclose()

    async def _run(
        self, room: rtc.Room, room_name: str, script: CallerScript, hang_up: HangUp | None
    ) -> CallRecording:
        samples, rate = read_wav(script.wav)
        agent_track: asyncio.Future[rtc.RemoteAudioTrack] = (
            asyncio.get_running_loop().create_future()
        )
        later_tracks: list[rtc.RemoteAudioTrack] = []

        @room.on("track_subscribed")
        def _on_track(
            track: rtc.Track, pub: rtc.RemoteTrackPublication, who: rtc.RemoteParticipant
        ) -> None:
            if not isinstance(track, rtc.RemoteAudioTrack):
                return
            if not agent_track.done():
                logger.info("agent %s answered (audio track subscribed)", who.identity)
                agent_track.set_result(track)
            elif recorder is not None:
                recorder.add(track)  # the caller hears every agent track, mixed
            else:
                later_tracks.append(track)

        recorder: _Recorder | None = None

        # The agent also sends its transcript and session state as data streams; the caller
        # only listens to audio, so drain them (unhandled topics are logged once per stream).
        drains: set[asyncio.Task[None]] = set()

        def _drain(reader: rtc.TextStreamReader | rtc.ByteStreamReader, _who: str) -> None:
            task = asyncio.create_task(_consume(reader))
            drains.add(task)
            task.add_done_callback(drains.discard)

        room.register_text_stream_handler("lk.transcription", _drain)
        room.register_byte_stream_handler("lk.agent.session", _drain)

        token = (
            api.AccessToken(self._key, self._secret)
            .with_identity("caller")
            .with_name("scripted caller")
            .with_grants(api.VideoGrants(room_join=True, room=room_name))
            .to_jwt()
        )
        await room.connect(self._ws_url, token, rtc.RoomOptions(auto_subscribe=True))
        source = rtc.AudioSource(rate, 1, queue_size_ms=40)
        mic = rtc.LocalAudioTrack.create_audio_track("caller-mic", source)
        await room.local_participant.publish_track(
            mic, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE)
        )
        try:
            track = await asyncio.wait_for(agent_track, self._answer_timeout_s)
        except TimeoutError:
            raise RuntimeError(
                f"no agent answered within {self._answer_timeout_s:.0f}s "
                f"(is a worker registered as {self._agent_name!r}?)"
            ) from None
        t0 = time.monotonic()
        recorder = _Recorder(rate, t0)
        for heard in (track, *later_tracks):
            recorder.add(heard)
        play_task = asyncio.create_task(_play(source, samples, rate), name="caller-player")
        hung_up_early = False
        try:
            if hang_up is not None:
                utt = script.utterances[hang_up.turn - 1]
                onset = await recorder.wait_for_speech_after(utt.end_s, script.duration_s + 5)
                if onset is None:
                    raise RuntimeError(f"no answer to utterance {hang_up.turn} to hang up on")
                await asyncio.sleep(hang_up.after_answer_s)
                hung_up_early = True
                logger.info("hanging up mid-answer at t=%.2fs", time.monotonic() - t0)
            else:
                await play_task
                await asyncio.sleep(self._tail_s)
        finally:
            play_task.cancel()
            for task in drains:
                task.cancel()
            await asyncio.gather(play_task, recorder.aclose(), *drains, return_exceptions=True)
            await room.disconnect()
        return CallRecording(
            samples=recorder.samples(),
            sample_rate=rate,
            transport=self.name,
            schedule_offset_s=0.0,
            room=room_name,
            hung_up_early=hung_up_early,
            notes=[f"playback queue {40} ms: utterance end times are exact to within it"],
        )


async def _consume(reader: rtc.TextStreamReader | rtc.ByteStreamReader) -> None:
    async for _ in reader:
        pass


async def _play(source: rtc.AudioSource, samples: Pcm, rate: int) -> None:
    """Push the caller WAV in real time (capture_frame blocks while the source queue is full)."""
    n = rate * FRAME_MS // 1000
    for i in range(0, len(samples) - n + 1, n):
        chunk = samples[i : i + n]
        await source.capture_frame(rtc.AudioFrame(chunk.tobytes(), rate, 1, n))
    await source.wait_for_playout()


class _Recorder:
    """Collects the agent's audio at ``rate`` on the call clock, every agent track mixed (the
    session's voice and the fallback announcements are separate tracks, as a phone leg hears
    them mixed); tracks live speech onsets."""

    def __init__(self, rate: int, t0: float) -> None:
        self._rate = rate
        self._t0 = t0
        self._buf = np.zeros(rate * 60, dtype=np.int32)
        self._length = 0
        self._speech_times: list[float] = []
        self._changed = asyncio.Event()
        self._tasks: list[asyncio.Task[None]] = []

    def add(self, track: rtc.RemoteAudioTrack) -> None:
        """Start recording ``track`` into the mix."""
        self._tasks.append(asyncio.create_task(self._run(track), name="caller-recorder"))

    async def aclose(self) -> None:
        for task in self._tasks:
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    async def _run(self, track: rtc.RemoteAudioTrack) -> None:
        stream = rtc.AudioStream.from_track(track=track, sample_rate=self._rate, num_channels=1)
        cursor = 0  # where this track's previous frame ended
        try:
            async for ev in stream:
                data = np.frombuffer(ev.frame.data, dtype=np.int16)
                # Place the frame at its arrival time unless it follows the track's previous
                # frame closely (no frames while a track is silent or the network stalls).
                arrival = int((time.monotonic() - self._t0) * self._rate) - len(data)
                at = arrival if arrival - cursor > self._rate // 10 else cursor
                at = max(at, 0)
                self._mix(at, data)
                cursor = at + len(data)
                rms = float(np.sqrt(np.mean((data.astype(np.float64) / 32768.0) ** 2) + 1e-12))
                if 20 * np.log10(rms) > SPEECH_DBFS:
                    self._speech_times.append(at / self._rate)
                    self._changed.set()
        finally:
            await stream.aclose()

    def _mix(self, at: int, data: Pcm) -> None:
        end = at + len(data)
        if end > len(self._buf):
            grown = np.zeros(max(end, 2 * len(self._buf)), dtype=np.int32)
            grown[: len(self._buf)] = self._buf
            self._buf = grown
        self._buf[at:end] += data
        self._length = max(self._length, end)

    async def wait_for_speech_after(self, after_s: float, limit_s: float) -> float | None:
        """Wait until speech is heard later than ``after_s`` (call clock); None on timeout."""
        deadline = self._t0 + limit_s
        while True:
            hits = [t for t in self._speech_times if t >= after_s]
            if hits:
                return hits[0]
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return None
            self._changed.clear()
            try:
                await asyncio.wait_for(self._changed.wait(), remaining)
            except TimeoutError:
                return None

    def samples(self) -> Pcm:
        return np.clip(self._buf[: self._length], -32768, 32767).astype(np.int16)
