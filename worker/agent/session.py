"""The agent job: one ``AgentSession`` per call, run in a livekit-agents job process.

Everything is local: our inference-server plugins for STT/LLM/TTS, Silero VAD from
``livekit-plugins-silero``, VAD-based turn detection and VAD interruptions (the 1.8 defaults
would call LiveKit Cloud), ``record=False``. The persona comes from ``config/agent.yaml``.
The agent greets, converses, and ends the job as soon as the caller leaves, which closes the
plugins' streams and so frees their inference-server slots.
"""

from __future__ import annotations

import asyncio
import logging
import os
from typing import Any, TypedDict

from livekit import rtc
from livekit.agents import (
    Agent,
    AgentSession,
    AutoSubscribe,
    ChatMessage,
    CloseEvent,
    ConversationItemAddedEvent,
    JobContext,
    JobProcess,
)
from livekit.plugins import silero

from worker.agent.plugins import InferenceLLM, InferenceSTT, InferenceTTS
from worker.agent.turn_metrics import TurnMetricsLog
from worker.config.agent import AgentConfig, load_agent_config

__all__ = ["CONFIG_ENV", "INFERENCE_URL_ENV", "VoiceAgent", "entrypoint", "prewarm"]

logger = logging.getLogger("voicestack.agent")

CONFIG_ENV = "VOICESTACK_AGENT_CONFIG"
"""Path of the agent config; set by ``voicestack agent start`` for its job processes."""
INFERENCE_URL_ENV = "VOICESTACK_INFERENCE_URL"
"""Overrides ``inference.url`` of the config (``--inference-url``)."""


def _config_from_env() -> tuple[AgentConfig, str]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV} is not set: start workers with `voicestack agent start`")
    cfg = load_agent_config(path)
    url = os.environ.get(INFERENCE_URL_ENV) or cfg.inference.url
    return cfg, url


def prewarm(proc: JobProcess) -> None:
    """Per job process, before any job: read the config once and load Silero VAD."""
    cfg, url = _config_from_env()
    proc.userdata["config"] = cfg
    proc.userdata["inference_url"] = url
    proc.userdata["vad"] = silero.VAD.load(
        activation_threshold=cfg.turn.vad_activation_threshold,
        min_silence_duration=cfg.turn.vad_min_silence_s,
        min_speech_duration=cfg.turn.vad_min_speech_s,
        force_cpu=True,
    )


class VoiceAgent(Agent):
    """The persona: instructions from the config; greets as soon as the session starts."""

    def __init__(self, cfg: AgentConfig) -> None:
        super().__init__(instructions=cfg.persona.system_prompt)
        self._greeting = cfg.persona.greeting

    async def on_enter(self) -> None:
        # The greeting is not interruptible: line noise at call setup must not cut it off.
        self.session.say(self._greeting, allow_interruptions=False)


def _turn_handling(cfg: AgentConfig) -> dict[str, Any]:
    turn = cfg.turn
    return {
        "turn_detection": "vad",
        "endpointing": {
            "mode": "fixed",
            "min_delay": turn.min_endpointing_delay_s,
            "max_delay": turn.max_endpointing_delay_s,
        },
        "interruption": {
            "enabled": turn.allow_interruptions,
            "mode": "vad",  # "adaptive" (the default) calls LiveKit Cloud
            "min_duration": turn.min_interruption_s,
        },
    }


class _ServerLink(TypedDict):
    """The plugin arguments that are the same for STT, LLM and TTS of one call."""

    url: str
    call_id: str
    connect_timeout: float


async def entrypoint(ctx: JobContext) -> None:
    """Run one call: connect, start the session, greet, end when the caller leaves."""
    cfg: AgentConfig = ctx.proc.userdata["config"]
    url: str = ctx.proc.userdata["inference_url"]
    call_id = ctx.room.name or ctx.job.id
    link = _ServerLink(url=url, call_id=call_id, connect_timeout=cfg.inference.connect_timeout_s)
    stt = InferenceSTT(
        **link,
        language=cfg.persona.language,
        interim_results=cfg.turn.stt_interim_results,
    )
    llm = InferenceLLM(
        **link,
        max_tokens=cfg.llm.max_tokens,
        temperature=cfg.llm.temperature,
        top_p=cfg.llm.top_p,
    )
    tts = InferenceTTS(
        **link,
        speed=cfg.persona.speaking_rate,
        sample_rate=cfg.persona.voice_sample_rate,
    )

    async def _close_plugins() -> None:
        await asyncio.gather(stt.aclose(), llm.aclose(), tts.aclose(), return_exceptions=True)

    ctx.add_shutdown_callback(_close_plugins)

    session: AgentSession = AgentSession(
        stt=stt,
        llm=llm,
        tts=tts,
        vad=ctx.proc.userdata["vad"],
        turn_handling=_turn_handling(cfg),  # type: ignore[arg-type]
        user_away_timeout=None,
    )
    metrics = TurnMetricsLog(call_id)

    @session.on("conversation_item_added")
    def _on_item(ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, ChatMessage):
            return
        metrics.on_message(item.role, item.text_content or "", dict(item.metrics or {}))

    @session.on("close")
    def _on_close(ev: CloseEvent) -> None:
        logger.info("session closed (%s): ending job %s", ev.reason, ctx.job.id)
        ctx.shutdown(reason=f"session closed: {ev.reason}")

    @ctx.room.on("participant_disconnected")
    def _on_left(participant: rtc.RemoteParticipant) -> None:
        # A caller hanging up (SIP BYE or a WebRTC leave) ends the job at once: the session
        # closes, its STT/LLM/TTS streams close, and the inference server frees their slots.
        humans = [
            p
            for p in ctx.room.remote_participants.values()
            if p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT
        ]
        if not humans:
            logger.info("caller %s left: ending job %s", participant.identity, ctx.job.id)
            ctx.shutdown(reason="caller hung up")

    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    await session.start(agent=VoiceAgent(cfg), room=ctx.room, record=False)
    logger.info("session started for call %s (inference at %s)", call_id, url)
