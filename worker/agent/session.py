"""The agent job: one ``AgentSession`` per call, run in a livekit-agents job process.

Everything is local: our inference-server plugins for STT/LLM/TTS, Silero VAD from
``livekit-plugins-silero``, VAD-based turn detection and VAD interruptions (the 1.8 defaults
would call LiveKit Cloud), ``record=False``. The persona comes from ``config/agent.yaml``.
The agent greets, converses, and ends the job as soon as the caller leaves, which closes the
plugins' streams and so frees their inference-server slots.

No dead air: the plugins fail fast (deadlines, heartbeat), a :class:`CallGuard` plays
pre-rendered fallback audio and recovers, transfers or hangs up; a call beyond the inference
server's capacity hears ``busy`` (or is rejected); a job re-dispatched after its process died
(``recovery`` in the job metadata) apologises instead of greeting.
"""

from __future__ import annotations

import asyncio
import logging
import math
import os
from typing import Any, TypedDict

from livekit import rtc
from livekit.agents import (
    AgentFalseInterruptionEvent,
    AgentSession,
    APIConnectOptions,
    AutoSubscribe,
    ChatMessage,
    CloseEvent,
    ConversationItemAddedEvent,
    JobContext,
    JobProcess,
    UserStateChangedEvent,
)
from livekit.agents.voice.agent_session import SessionConnectOptions
from livekit.plugins import silero

from worker.agent.announcements import Announcements, Announcer, load_announcements
from worker.agent.backchannel import OverlapFilter
from worker.agent.call_archive import CallArchive
from worker.agent.call_control import CallControl, call_event
from worker.agent.call_guard import CallGuard
from worker.agent.end_of_turn import TranscriptEndOfTurn
from worker.agent.fault_metrics import fault_metrics
from worker.agent.job_context import (
    RECOVERY_METADATA_KEY,
    OutboundContext,
    job_metadata,
)
from worker.agent.plugins import InferenceLLM, InferenceSTT, InferenceTTS
from worker.agent.plugins._client import StreamDeadlines, get_json
from worker.agent.plugins.llm_prefill import prefill_call
from worker.agent.turn_metrics import TurnMetricsLog
from worker.agent.voice_agent import VoiceAgent
from worker.agent.watchdog import END_CALL_SIGNAL
from worker.config.agent import AgentConfig, FallbackConfig, load_agent_config, load_call_flows
from worker.config.flows import FlowsConfig
from worker.records.caller_key import load_secret
from worker.records.spool import Spool

__all__ = [
    "CONFIG_ENV",
    "INFERENCE_URL_ENV",
    "entrypoint",
    "prewarm",
    "turn_handling",
]

logger = logging.getLogger("voicestack.agent")

CONFIG_ENV = "VOICESTACK_AGENT_CONFIG"
"""Path of the agent config; set by ``voicestack agent start`` for its job processes."""
INFERENCE_URL_ENV = "VOICESTACK_INFERENCE_URL"
"""Overrides ``inference.url`` of the config (``--inference-url``)."""
CALLED_NUMBER_ATTR = "sip.trunkPhoneNumber"
"""The SIP participant attribute with the number the caller dialled (picks the flow)."""
CALL_STATUS_ATTR = "sip.callStatus"
"""dialing / ringing / active / hangup (livekit-sip)."""
CALLER_NUMBER_ATTR = "sip.phoneNumber"
"""The remote party's number: the caller's (inbound) or the callee's (outbound)."""
_CALLER_WAIT_S = 10.0
_ANSWER_WAIT_S = 330.0  # above the longest ringing timeout an outbound trunk may set


def _config_from_env() -> tuple[AgentConfig, FlowsConfig, str]:
    path = os.environ.get(CONFIG_ENV)
    if not path:
        raise RuntimeError(f"{CONFIG_ENV} is not set: start workers with `voicestack agent start`")
    cfg = load_agent_config(path)
    flows = load_call_flows(cfg, path)
    url = os.environ.get(INFERENCE_URL_ENV) or cfg.inference.url
    return cfg, flows, url


def prewarm(proc: JobProcess) -> None:
    """Per job process, before any job: read the config once and load Silero VAD."""
    cfg, flows, url = _config_from_env()
    proc.userdata["config"] = cfg
    proc.userdata["flows"] = flows
    proc.userdata["inference_url"] = url
    # Rendered by the worker before it registered (worker.agent.runner): no job runs without.
    proc.userdata["announcements"] = load_announcements(cfg)
    records = cfg.records.resolved(os.environ)
    proc.userdata["records"] = records
    if records.enabled:
        proc.userdata["spool"] = Spool.of(records)
        proc.userdata["caller_secret"] = load_secret(records)
    proc.userdata["vad"] = silero.VAD.load(
        activation_threshold=cfg.turn.vad_activation_threshold,
        min_silence_duration=cfg.turn.vad_min_silence_s,
        min_speech_duration=cfg.turn.vad_min_speech_s,
        force_cpu=True,
    )


def connect_options(cfg: AgentConfig) -> SessionConnectOptions:
    """LLM and TTS fail at once (the :class:`CallGuard` holds and recovers, a blind retry
    would only lengthen the silence); STT reconnects for as long as a recovery may take; the
    session itself never closes over errors: the guard decides the call's fate."""
    fb = cfg.fallback
    connect = cfg.inference.connect_timeout_s
    stt_retries = math.ceil(fb.recovery_timeout_s / 0.5) + 4
    return SessionConnectOptions(
        stt_conn_options=APIConnectOptions(
            max_retry=stt_retries, retry_interval=0.5, timeout=connect
        ),
        llm_conn_options=APIConnectOptions(max_retry=0, timeout=connect),
        tts_conn_options=APIConnectOptions(max_retry=0, timeout=connect),
        max_unrecoverable_errors=1_000_000,
    )


def stream_deadlines(fb: FallbackConfig) -> StreamDeadlines:
    return StreamDeadlines(
        stt=fb.stt_final_timeout_s,
        llm=fb.llm_reply_timeout_s,
        llm_first=fb.llm_first_token_timeout_s,
        tts=fb.tts_audio_timeout_s,
        heartbeat=fb.heartbeat_s,
    )


async def accepting_calls(url: str, timeout_s: float) -> bool:
    """The inference server's ``/v1/capacity`` says a new call would be admitted."""
    status, data = await get_json(url, "/v1/capacity", timeout_s=timeout_s)
    return status == 200 and isinstance(data, dict) and bool(data.get("accepting"))


def turn_handling(cfg: AgentConfig) -> dict[str, Any]:
    """livekit-agents ``turn_handling`` from ``turn:``; every model in it runs locally."""
    turn = cfg.turn
    detection: Any = "vad"
    if turn.detector == "transcript":
        detection = TranscriptEndOfTurn(cfg.persona.language)
    elif turn.detector == "local_eot":
        from livekit.agents.inference import TurnDetector

        # v1-mini runs in-process from the livekit-local-inference wheel; "v1" is LiveKit Cloud.
        detection = TurnDetector(version="v1-mini", local_fallback=False)
    return {
        "turn_detection": detection,
        "endpointing": {
            "mode": "fixed",
            "min_delay": turn.min_endpointing_delay_s,
            "max_delay": turn.max_endpointing_delay_s,
        },
        "interruption": {
            "enabled": turn.allow_interruptions,
            "mode": "vad",  # "adaptive" (the default) calls LiveKit Cloud
            "min_duration": turn.min_interruption_s,
            "resume_false_interruption": turn.resume_false_interruption,
            "false_interruption_timeout": turn.false_interruption_timeout_s,
        },
        "preemptive_generation": {
            "enabled": turn.preemptive_generation,
            "preemptive_tts": turn.preemptive_tts,
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
    announcements: Announcements = ctx.proc.userdata["announcements"]
    metadata = job_metadata(ctx.job.metadata)
    recovered = RECOVERY_METADATA_KEY in metadata
    outbound = OutboundContext.from_metadata(metadata)
    announcer = Announcer(ctx.room, announcements)
    archive = CallArchive(
        call_id,
        ctx.proc.userdata,
        direction="outbound" if outbound is not None else "inbound",
        inference_url=url,
    )
    recorder = archive.recorder

    flows: FlowsConfig = ctx.proc.userdata["flows"]
    control: CallControl | None = None  # set once the caller's line (flow) is known

    async def _end_call(reason: str) -> None:
        """Transfer the caller to ``fallback.transfer_to`` if set (only an allowlisted
        target; a failed transfer falls back to a hang-up), else hang up by deleting the
        room; then end the job."""
        target = cfg.fallback.transfer_to
        if target and control is not None and not control.ended:
            if await control.transfer(reason, target=target, say=False):
                return
            await announcer.play("goodbye")
        recorder.finish("failed", ended_by="system", detail=reason)
        logger.warning("ending call %s: %s", call_id, reason)
        await ctx.delete_room()
        ctx.shutdown(reason=reason)  # a no-op when the job is already shutting down

    overload = cfg.fallback.on_overload
    if (
        overload != "ring"
        and not recovered
        and not await accepting_calls(url, cfg.inference.capacity_timeout_s)
    ):
        # Beyond capacity: never answer into silence, never let it ring for nothing.
        fault_metrics().refused.labels(action=overload).inc()
        recorder.finish("refused", ended_by="system", detail=f"at capacity: {overload}")
        if overload == "reject":
            logger.warning("call %s refused: the inference server is at capacity", call_id)
            await archive.keep()
            await ctx.delete_room()
            ctx.shutdown(reason="at capacity: rejected")
            return
        await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
        logger.warning("call %s: inference server at capacity; playing the busy message", call_id)
        await announcer.play("busy")
        await archive.keep()
        await ctx.delete_room()  # the message says "call again": hang up, no transfer
        ctx.shutdown(reason="at capacity: busy message played")
        return

    overlap = OverlapFilter(cfg.turn.backchannels)
    stt = InferenceSTT(
        **link,
        language=cfg.persona.language,
        interim_results=cfg.turn.stt_interim_results,
        final_filter=overlap.final_text,
    )
    llm = InferenceLLM(
        **link,
        max_tokens=cfg.llm.max_tokens,
        context_tokens=cfg.llm.context_tokens,
        max_history_chars=cfg.llm.max_history_chars,
        max_sentences=cfg.llm.max_sentences,
        temperature=cfg.llm.temperature,
        top_p=cfg.llm.top_p,
    )
    tts = InferenceTTS(
        **link,
        speed=cfg.persona.speaking_rate,
        sample_rate=cfg.persona.voice_sample_rate,
    )

    deadlines = stream_deadlines(cfg.fallback)
    for plugin in (stt, llm, tts):
        plugin.set_deadlines(deadlines)

    session: AgentSession = AgentSession(
        stt=stt,
        llm=llm,
        tts=tts,
        vad=ctx.proc.userdata["vad"],
        turn_handling=turn_handling(cfg),  # type: ignore[arg-type]
        user_away_timeout=None,
        conn_options=connect_options(cfg),
    )
    guard = CallGuard(
        session,
        announcer,
        cfg.fallback,
        inference_url=url,
        end_call=_end_call,
        observer=recorder.event,
    )

    async def _on_shutdown(reason: str) -> None:
        # The job ends while the caller is still on the line (the worker restarts after losing
        # a helper process, or a drain timed out): a goodbye (or the transfer) and a hang-up,
        # never a caller left in a room nobody speaks in.
        if ctx.room.isconnected() and _caller(ctx.room) is not None:
            logger.warning("job ending with the caller on the line (%s): ending the call", reason)
            await guard.end(f"the agent is shutting down: {reason}")
        await guard.aclose()
        if control is not None:
            await control.aclose()
        for task in list(warming):
            task.cancel()
        await asyncio.gather(
            *warming,
            stt.aclose(),
            llm.aclose(),
            tts.aclose(),
            announcer.aclose(),
            return_exceptions=True,
        )
        await archive.keep()

    ctx.add_shutdown_callback(_on_shutdown)

    def _worker_going_away() -> None:
        # The worker's main process is about to exit (worker.agent.watchdog.end_live_calls).
        task = asyncio.create_task(guard.end("the agent worker is restarting"))
        ending.add(task)
        task.add_done_callback(ending.discard)

    ending: set[asyncio.Task[None]] = set()
    try:
        asyncio.get_running_loop().add_signal_handler(END_CALL_SIGNAL, _worker_going_away)
    except (NotImplementedError, RuntimeError, ValueError) as err:  # not the main thread
        logger.warning("cannot end calls on the worker's signal: %s", err)
    metrics = TurnMetricsLog(
        call_id, log_transcripts=cfg.worker.log_transcripts, redact=recorder.redact
    )
    warming: set[asyncio.Task[bool]] = set()

    def _prefill() -> None:
        # The next prompt is known once the agent has spoken: prefill it now, off the caller's
        # critical path (worker.agent.plugins.llm_prefill).
        if not cfg.llm.prefill:
            return
        agent = session.current_agent
        task = asyncio.create_task(prefill_call(llm, agent.chat_ctx, tools=agent.tools))
        warming.add(task)
        task.add_done_callback(warming.discard)

    @session.on("conversation_item_added")
    def _on_item(ev: ConversationItemAddedEvent) -> None:
        item = ev.item
        if not isinstance(item, ChatMessage):
            return
        if item.role == "assistant" and item.interrupted:
            # livekit-agents keeps only the part the caller heard in the history.
            logger.info("call %s: answer interrupted; the history keeps what was heard", call_id)
        text = item.text_content or ""
        turn = metrics.on_message(item.role, text, dict(item.metrics or {}))
        if item.role == "user":
            recorder.caller_turn(text)
        elif item.role == "assistant":
            latency = {**turn.stages(), "e2e": turn.e2e} if turn is not None else {}
            recorder.agent_turn(text, interrupted=bool(item.interrupted), latency=latency)
            _prefill()

    @session.on("user_state_changed")
    def _on_user_state(ev: UserStateChangedEvent) -> None:
        if ev.new_state == "speaking":
            over_agent = session.agent_state == "speaking"
            overlap.user_started_speaking(agent_speaking=over_agent)
            if over_agent:
                logger.info("call %s: the caller speaks over the agent", call_id)

    @session.on("agent_false_interruption")
    def _on_false_interruption(ev: AgentFalseInterruptionEvent) -> None:
        # No words, a cough or a backchannel: the paused answer goes on where it stopped.
        logger.info(
            "call %s: no interruption after all; answer %s",
            call_id,
            "resumed" if ev.resumed else "not resumable",
        )

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
            recorder.finish("completed", ended_by="caller", detail="the caller hung up")
            logger.info("caller %s left: ending job %s", participant.identity, ctx.job.id)
            ctx.shutdown(reason="caller hung up")

    await ctx.connect(auto_subscribe=AutoSubscribe.AUDIO_ONLY)
    caller = await _wait_caller(ctx)
    if outbound is not None:
        # The line the call presents as caller ID speaks, unless the dialer named one.
        if outbound.flow:
            flow = flows.by_name(outbound.flow)
        else:
            flow = flows.for_number(outbound.caller_id or None)
        called: str | None = outbound.number
        if caller is None or not await _wait_answered(caller):
            logger.info("outbound call %s to %s was not answered", call_id, called)
            recorder.finish("unanswered", ended_by="system", detail="not answered")
            await archive.keep()
            await ctx.delete_room()
            ctx.shutdown(reason="outbound call not answered")
            return
    else:
        called = caller.attributes.get(CALLED_NUMBER_ATTR) if caller is not None else None
        flow = flows.for_number(called)
    if flow is None:
        # No line answers this number (the flows file has no default): not our call.
        logger.error("call %s to %s: no flow answers this number; hanging up", call_id, called)
        recorder.finish("failed", ended_by="system", detail="no flow answers the called number")
        await archive.keep()
        await ctx.delete_room()
        ctx.shutdown(reason="no flow for the called number")
        return
    remote = caller.attributes.get(CALLER_NUMBER_ATTR) if caller is not None else None
    line_records = archive.line(
        flow.name,
        flow.records,
        called=called,
        caller=(outbound.number if outbound is not None else remote) or None,
    )
    call_event(
        call_id,
        "line",
        flow=flow.name,
        called=called or "-",
        direction="outbound" if outbound is not None else "inbound",
    )

    async def _note(text: str, digits: str = "") -> None:
        agent = session.current_agent
        chat = agent.chat_ctx.copy()
        chat.add_message(role="system", content=text)
        await agent.update_chat_ctx(chat)
        if cfg.worker.log_transcripts:
            if digits:
                text = text.replace(digits, recorder.redact_digits(digits))
            logger.info("call %s: context note: %s", call_id, recorder.redact(text))

    control = CallControl(
        ctx,
        session,
        flows,
        flow,
        call_id=call_id,
        caller=lambda: _caller(ctx.room),
        on_note=_note,
        log_personal=cfg.worker.log_transcripts,
        redact_digits=recorder.redact_digits,
        redact_text=recorder.redact,
    )
    archive.follow(session, control)

    @ctx.room.on("sip_dtmf_received")
    def _on_dtmf(ev: rtc.SipDTMF) -> None:
        if control is not None:
            control.on_dtmf(ev.digit)

    instructions = flow.system_prompt or cfg.persona.system_prompt
    greeting = flow.greeting or cfg.persona.greeting
    menu_prompt = flow.menu_prompt
    if outbound is not None:
        instructions = f"{instructions}\n{outbound.instructions()}"
        greeting, menu_prompt = outbound.greeting(flow.outbound_greeting), None
        if outbound.dtmf:
            await control.send_dtmf(outbound.dtmf)  # e.g. an extension behind an IVR
    await announcer.start()
    await session.start(
        agent=VoiceAgent(
            instructions, greeting, menu_prompt, announcer, control, recorder, recovered=recovered
        ),
        room=ctx.room,
        record=False,
    )
    _prefill()  # the system prompt, while the greeting plays
    await archive.record_audio(session, line_records)
    logger.info(
        "session started for call %s (inference at %s%s)",
        call_id,
        url,
        "; took over after the agent was lost" if recovered else "",
    )


async def _wait_caller(ctx: JobContext) -> rtc.RemoteParticipant | None:
    """The caller (a SIP participant is in the room before the agent is dispatched; a WebRTC
    caller may join a moment later); None if nobody comes within a few seconds."""
    try:
        async with asyncio.timeout(_CALLER_WAIT_S):
            return await ctx.wait_for_participant()
    except TimeoutError:
        return _caller(ctx.room)


async def _wait_answered(caller: rtc.RemoteParticipant) -> bool:
    """An outbound callee's phone rings until ``sip.callStatus`` turns ``active`` (answered);
    False when the call ends (hung up, busy, no answer) or never answers in time."""
    loop = asyncio.get_running_loop()
    until = loop.time() + _ANSWER_WAIT_S
    while loop.time() < until:
        status = caller.attributes.get(CALL_STATUS_ATTR, "")
        if status == "active":
            return True
        if status == "hangup" or caller.disconnect_reason:
            return False
        await asyncio.sleep(0.1)
    return False


def _caller(room: rtc.Room) -> rtc.RemoteParticipant | None:
    for p in room.remote_participants.values():
        if p.kind != rtc.ParticipantKind.PARTICIPANT_KIND_AGENT:
            return p
    return None
