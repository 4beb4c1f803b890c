"""Text-to-speech plugin for livekit-agents, backed by the inference server's ``tts`` stream.

The stream forwards LLM text as it arrives (``push_text``); the server cuts it into clauses and
synthesizes each complete clause at once, so the first audio follows the first clause, not the
whole reply. ``synthesize(text)`` (one-shot) is the same stream with the text pushed at once.
"""

from __future__ import annotations

import functools

from livekit.agents import APIConnectOptions, APIError, tts, utils
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS

from ._client import InferencePlugin, InferenceStream, run_duplex

__all__ = ["InferenceSynthesizeStream", "InferenceTTS"]

PIPER_SAMPLE_RATE = 22050


class InferenceTTS(InferencePlugin, tts.TTS):
    """livekit-agents TTS whose synthesis runs on the voicestack inference server.

    ``sample_rate`` must be the rate of the server's voice (Piper voices: 22050 Hz); a server
    that announces another rate fails the stream with a clear error instead of playing audio
    at the wrong speed.
    """

    def __init__(
        self,
        *,
        url: str,
        speed: float = 1.0,
        sample_rate: int = PIPER_SAMPLE_RATE,
        call_id: str = "",
        connect_timeout: float = 5.0,
    ) -> None:
        super().__init__(
            capabilities=tts.TTSCapabilities(streaming=True),
            sample_rate=sample_rate,
            num_channels=1,
        )
        if speed <= 0:
            raise ValueError(f"TTS speed must be positive, got {speed}")
        self._connect(url, call_id=call_id, connect_timeout=connect_timeout)
        self._speed = speed

    def synthesize(
        self, text: str, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> tts.ChunkedStream:
        return self._synthesize_with_stream(text, conn_options=conn_options)

    def stream(
        self, *, conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS
    ) -> InferenceSynthesizeStream:
        return InferenceSynthesizeStream(tts=self, conn_options=conn_options)

    async def aclose(self) -> None:
        await self._client.aclose()


class InferenceSynthesizeStream(tts.SynthesizeStream):
    """Streaming synthesis: ``push_text`` as tokens arrive, ``flush``/``end_input``, audio out.

    All clauses of one stream form one livekit segment (livekit-agents 1.8 uses one
    ``SynthesizeStream`` per segment).
    """

    def __init__(self, *, tts: InferenceTTS, conn_options: APIConnectOptions) -> None:
        super().__init__(tts=tts, conn_options=conn_options)
        self._owner = tts

    async def _run(self, output_emitter: tts.AudioEmitter) -> None:
        request_id = utils.shortuuid("tts_")
        # The emitter is initialized before any audio can arrive (livekit's contract).
        output_emitter.initialize(
            request_id=request_id,
            sample_rate=self._owner.sample_rate,
            num_channels=1,
            mime_type="audio/pcm",
            stream=True,
        )
        owner = self._owner
        stream = await owner._client.open(
            {"op": "tts", "call_id": owner._call_id, "speed": owner._speed},
            connect_timeout=self._conn_options.timeout,
        )
        recv = functools.partial(self._recv_loop, emitter=output_emitter, request_id=request_id)
        await run_duplex(stream, self._send_loop, recv, name="InferenceTTS")

    async def _send_loop(self, stream: InferenceStream) -> None:
        async for item in self._input_ch:
            if isinstance(item, self._FlushSentinel):
                stream.expect()  # the text so far must now be spoken
                await stream.send_json({"type": "flush"})
            else:
                self._mark_started()
                await stream.send_json({"type": "push_text", "text": item})
        stream.expect()
        await stream.send_json({"type": "end_input"})

    async def _recv_loop(
        self, stream: InferenceStream, emitter: tts.AudioEmitter, request_id: str
    ) -> None:
        started = False
        async for msg in stream.messages():
            if msg.audio is not None:
                if not started:
                    raise APIError("inference server sent TTS audio before 'audio_start'")
                emitter.push(msg.audio)
                continue
            data = msg.data or {}
            kind = data.get("type")
            if kind == "audio_start":
                rate = int(data.get("sample_rate", 0))
                if rate != self._owner.sample_rate:
                    raise APIError(
                        f"inference server voice is {rate} Hz but this TTS was configured for "
                        f"{self._owner.sample_rate} Hz; set the TTS sample_rate to match",
                        retryable=False,
                    )
                if not started:
                    emitter.start_segment(segment_id=request_id)
                    started = True
            elif kind == "audio_end":
                stream.satisfied()
                # Push what is buffered so playout of this clause is not held for the next.
                emitter.flush()
            elif kind == "done":
                if started:
                    emitter.end_segment()
                return
        raise APIError("inference server closed the TTS stream before 'done'")
