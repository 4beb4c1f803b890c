"""livekit-agents plugins (STT, LLM, TTS) that are clients of the voicestack inference server.

They follow docs/inference-protocol.md and livekit-agents' plugin interfaces, so any LiveKit
agent can use them::

    from worker.agent.plugins import InferenceLLM, InferenceSTT, InferenceTTS
    session = AgentSession(stt=InferenceSTT(url=u), llm=InferenceLLM(url=u),
                           tts=InferenceTTS(url=u), vad=silero.VAD.load(...))
"""

from __future__ import annotations

from ._client import InferenceClient, ServerError
from .llm import InferenceLLM, InferenceLLMStream, ToolCallParser, chat_ctx_to_messages
from .stt import InferenceSTT, InferenceSTTStream
from .tts import InferenceSynthesizeStream, InferenceTTS

__all__ = [
    "InferenceClient",
    "InferenceLLM",
    "InferenceLLMStream",
    "InferenceSTT",
    "InferenceSTTStream",
    "InferenceSynthesizeStream",
    "InferenceTTS",
    "ServerError",
    "ToolCallParser",
    "chat_ctx_to_messages",
]
