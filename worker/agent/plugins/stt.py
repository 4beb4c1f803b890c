"""Speech-to-text plugin for livekit-agents, backed by the inference server's ``stt`` stream.

Any LiveKit agent can use it: ``AgentSession(stt=InferenceSTT(url=...), vad=...)``. The stream
forwards 16 kHz mono audio as the caller speaks (the server answers with coalesced interim
transcripts) and asks for a final transcript on ``flush``: ``manual_flush`` is declared, so the
session's VAD end of speech triggers the flush and no STT-side endpointing is needed.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from livekit import rtc
from livekit.agents import APIConnectOptions, APIError, stt, utils
from livekit.agents.language import LanguageCode
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr
from livekit.agents.utils import AudioBuffer

from ._audio import frame_to_mono_pcm, split_pcm
from ._client import InferencePlugin, InferenceStream, run_duplex

__all__ = ["STT_SAMPLE_RATE", "InferenceSTT", "InferenceSTTStream"]

STT_SAMPLE_RATE = 16000
"""The protocol's v1 STT input rate; frames at other rates are resampled by the stream."""


class InferenceSTT(InferencePlugin, stt.STT):
    """livekit-agents STT whose recognition runs on the voicestack inference server."""

    def __init__(
        self,
        *,
        url: str,
        language: str = "en",
        interim_results: bool = True,
        call_id: str = "",
        connect_timeout: float = 5.0,
        final_filter: Callable[[str], str] | None = None,
    ) -> None:
        """``final_filter`` maps each streamed final transcript to what the session sees (the
        agent's :class:`worker.agent.backchannel.OverlapFilter`); ``""`` means no turn."""
        super().__init__(
            capabilities=stt.STTCapabilities(
                streaming=True,
                interim_results=interim_results,
                offline_recognize=True,
                # The server only finalizes on flush: the session's VAD end of speech is the
                # flush (see livekit.agents.voice.audio_recognition).
                manual_flush=True,
            )
        )
        self._connect(url, call_id=call_id, connect_timeout=connect_timeout)
        self._language = language
        self._interim = interim_results
        self._final_filter = final_filter

    @property
    def call_id(self) -> str:
        return self._call_id

    def _start_frame(self, language: NotGivenOr[str], interim: bool) -> dict[str, object]:
        return {
            "op": "stt",
            "call_id": self._call_id,
            "sample_rate": STT_SAMPLE_RATE,
            "language": language if utils.is_given(language) else self._language,
            "interim": interim,
        }

    async def _recognize_impl(
        self,
        buffer: AudioBuffer,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions,
    ) -> stt.SpeechEvent:
        """Transcribe a whole buffer at once (one flush, no interims)."""
        frame = rtc.combine_audio_frames(buffer)
        if frame.sample_rate != STT_SAMPLE_RATE:
            resampler = rtc.AudioResampler(
                frame.sample_rate, STT_SAMPLE_RATE, quality=rtc.AudioResamplerQuality.HIGH
            )
            frames = [*resampler.push(frame), *resampler.flush()]
            frame = rtc.combine_audio_frames(frames) if frames else frame
        pcm = frame_to_mono_pcm(frame)
        request_id = utils.shortuuid()
        lang = language if utils.is_given(language) else self._language
        stream = await self._client.open(
            self._start_frame(language, interim=False), connect_timeout=conn_options.timeout
        )
        async with stream:
            for chunk in split_pcm(pcm, sample_rate=STT_SAMPLE_RATE):
                await stream.send_audio(chunk)
            await stream.send_json({"type": "end_input"})
            texts: list[str] = []
            done = False
            async for msg in stream.messages():
                if msg.data is None:
                    continue
                if msg.data.get("type") == "final":
                    texts.append(str(msg.data.get("text", "")).strip())
                elif msg.data.get("type") == "done":
                    done = True
                    break
            if not done:
                raise APIError("inference server closed the STT stream before 'done'")
        return stt.SpeechEvent(
            type=stt.SpeechEventType.FINAL_TRANSCRIPT,
            request_id=request_id,
            alternatives=[
                stt.SpeechData(language=LanguageCode(lang), text=" ".join(t for t in texts if t))
            ],
        )

    def stream(
        self,
        *,
        language: NotGivenOr[str] = NOT_GIVEN,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
    ) -> InferenceSTTStream:
        return InferenceSTTStream(stt=self, language=language, conn_options=conn_options)

    async def aclose(self) -> None:
        await self._client.aclose()


class InferenceSTTStream(stt.RecognizeStream):
    """Streaming recognition: push frames, ``flush`` per utterance, ``end_input`` at the end.

    Events: INTERIM_TRANSCRIPT while audio arrives, FINAL_TRANSCRIPT after each flush (empty
    text when nothing was said: the session still needs it to stop waiting), and
    RECOGNITION_USAGE with the audio duration of each finalized segment.
    """

    def __init__(
        self,
        *,
        stt: InferenceSTT,
        language: NotGivenOr[str],
        conn_options: APIConnectOptions,
    ) -> None:
        super().__init__(stt=stt, conn_options=conn_options, sample_rate=STT_SAMPLE_RATE)
        self._owner = stt
        self._language = LanguageCode(language if utils.is_given(language) else stt._language)

    async def _run(self) -> None:
        owner = self._owner
        stream = await owner._client.open(
            owner._start_frame(self._language, interim=owner._interim),
            connect_timeout=self._conn_options.timeout,
        )
        await run_duplex(stream, self._send_loop, self._recv_loop, name="InferenceSTT")

    async def _send_loop(self, stream: InferenceStream) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                stream.expect()  # a final transcript is now due
                await stream.send_json({"type": "flush"})
            else:
                await stream.send_audio(frame_to_mono_pcm(item))
        # The input channel closed: end_input() was called (aclose() cancels us instead).
        await stream.send_json({"type": "end_input"})

    async def _recv_loop(self, stream: InferenceStream) -> None:
        request_id = utils.shortuuid()
        async for msg in stream.messages():
            data = msg.data
            if data is None:
                continue
            kind = data.get("type")
            if kind == "interim":
                text = str(data.get("text", "")).strip()
                if text:
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.INTERIM_TRANSCRIPT,
                            request_id=request_id,
                            alternatives=[stt.SpeechData(language=self._language, text=text)],
                        )
                    )
            elif kind == "final":
                stream.satisfied()
                text = str(data.get("text", "")).strip()
                if self._owner._final_filter is not None:
                    text = self._owner._final_filter(text)
                audio_s = float(data.get("audio_ms", 0)) / 1000.0
                self._event_ch.send_nowait(
                    stt.SpeechEvent(
                        type=stt.SpeechEventType.FINAL_TRANSCRIPT,
                        request_id=request_id,
                        alternatives=[
                            stt.SpeechData(
                                language=self._language, text=text, end_time=0.0, confidence=1.0
                            )
                        ],
                        created_at=time.time(),
                    )
                )
                if audio_s > 0:
                    self._event_ch.send_nowait(
                        stt.SpeechEvent(
                            type=stt.SpeechEventType.RECOGNITION_USAGE,
                            request_id=request_id,
                            recognition_usage=stt.RecognitionUsage(audio_duration=audio_s),
                        )
                    )
                request_id = utils.shortuuid()
            elif kind == "done":
                return
        raise APIError("inference server closed the STT stream before 'done'")
