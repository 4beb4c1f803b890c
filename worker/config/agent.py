"""Typed configuration of the agent worker (``config/agent.yaml``): the persona the caller
hears, the inference server it talks to, turn handling, and the worker's process settings.

Load it once with :func:`load_agent_config`; every section forbids unknown keys so a typo is an
error that names the key.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Literal, Self

from pydantic import BaseModel, ConfigDict, Field, model_validator

from worker.config.flows import DEFAULT_FLOWS, FlowsConfig, load_flows
from worker.config.loader import ConfigError, load_model
from worker.config.records import RecordsConfig

__all__ = [
    "AgentConfig",
    "FallbackConfig",
    "FallbackMessages",
    "InferenceClientConfig",
    "LLMSettings",
    "PersonaConfig",
    "TurnConfig",
    "WorkerConfig",
    "flows_path",
    "load_agent_config",
    "load_call_flows",
    "rebase_flows",
]

Seconds = Annotated[float, Field(gt=0)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class PersonaConfig(_Strict):
    """Who the agent is: what it is told, what it says first, how and in which language."""

    system_prompt: Annotated[str, Field(min_length=1)]
    greeting: Annotated[str, Field(min_length=1)]
    """Spoken as soon as the caller joins, before the caller says anything."""
    language: Annotated[str, Field(pattern=r"^[a-z]{2}(-[A-Z]{2})?$")] = "en"
    voice: Annotated[str, Field(min_length=1)] = "en_US-joe-medium"
    """The Piper voice the inference server must have loaded; the worker checks the sample rate
    it announces (``voice_sample_rate``) on every TTS stream."""
    voice_sample_rate: Annotated[int, Field(ge=8000, le=48000)] = 22050
    speaking_rate: Annotated[float, Field(gt=0.25, le=4.0)] = 1.0


class InferenceClientConfig(_Strict):
    """Where the inference server is; ``voicestack agent start --inference-url`` overrides."""

    url: Annotated[str, Field(pattern=r"^https?://")] = "http://127.0.0.1:8765"
    connect_timeout_s: Seconds = 5.0
    capacity_timeout_s: Seconds = 0.4
    """How long the load report waits for ``/v1/capacity`` before reporting full load."""


class LLMSettings(_Strict):
    max_tokens: Annotated[int, Field(ge=1, le=4096)] = 96
    context_tokens: Annotated[int, Field(ge=256, le=131_072)] = 2048
    """The server model's context per call (the inference config's ``llm.n_ctx``): the chat
    history sent is trimmed to fit it with the reply, so a long call never overflows."""
    max_history_chars: Annotated[int, Field(ge=200)] = 2400
    """At most this much chat history per request (fewer if the context is smaller). A phone
    answer needs the last few turns, and the first answer after a trim prefills the whole
    window: about 600 tokens, measured 8.4 ms each on the 2-core CPU box with the bundled
    model. Raise it on a GPU."""
    prefill: bool = True
    """Prefill the call's next prompt on the server right after each answer (and the system
    prompt during the greeting), so a turn only prefills the caller's new words."""
    max_sentences: Annotated[int, Field(ge=1, le=20)] | None = 2
    """A reply ends after this many sentences (its generation is cancelled on the server): a
    phone answer is short, and the rest would be talked over. null: only ``max_tokens``."""
    temperature: Annotated[float, Field(ge=0, le=2)] = 0.6
    top_p: Annotated[float, Field(gt=0, le=1)] = 0.95


class TurnConfig(_Strict):
    """Local turn handling: end of turn, preemptive generation and barge-in (no cloud models).

    The stage-by-stage budget these settings trade against is in docs/latency.md."""

    detector: Literal["vad", "transcript", "local_eot"] = "transcript"
    """``vad``: the turn ends ``min_endpointing_delay_s`` after Silero VAD's end of speech.
    ``transcript``: the same, but a final transcript that stops mid-sentence ("the status of
    my") waits up to ``max_endpointing_delay_s`` (:mod:`worker.agent.end_of_turn`).
    ``local_eot``: LiveKit's audio end-of-turn model (``turn-detector-v1-mini``, shipped inside
    the ``livekit-local-inference`` wheel, run in the job process): a likely end of turn waits
    ``min_endpointing_delay_s``, an unlikely one up to ``max_endpointing_delay_s``."""
    min_endpointing_delay_s: Annotated[float, Field(ge=0)] = 0.25
    max_endpointing_delay_s: Seconds = 1.5
    preemptive_generation: bool = True
    """Start the LLM on the final transcript before the turn is committed; dropped (and its
    engine work cancelled) when the caller goes on speaking."""
    preemptive_tts: bool = False
    """Also synthesize before the commit (more wasted work when the caller goes on)."""
    min_interruption_s: Annotated[float, Field(ge=0)] = 0.2
    """Caller speech over the agent for this long pauses the agent's audio."""
    allow_interruptions: bool = True
    resume_false_interruption: bool = True
    """A pause that brings no words (a cough, noise) or only a backchannel resumes the answer
    where it stopped instead of abandoning it."""
    false_interruption_timeout_s: Seconds = 1.0
    """Silence after the caller's overlap before a paused answer resumes."""
    backchannels: tuple[str, ...] = (
        "mm-hmm",
        "mhm",
        "uh-huh",
        "mm",
        "hmm",
        "okay",
        "ok",
        "yeah",
        "yes",
        "yep",
        "right",
        "sure",
        "i see",
        "got it",
        "alright",
        "all right",
        "uh",
        "um",
    )
    """Said over the agent, a transcript made only of these is a backchannel: the answer
    resumes. Anything else (``stop``, ``wait``, a question) is a real interruption."""
    stt_interim_results: bool = False
    """Interim transcripts compete with finals for the STT engine; VAD turn handling does not
    need them (measured on the 2-core dev box: final 0.9 s after flush without, 1.1-1.5 s
    with)."""
    vad_activation_threshold: Annotated[float, Field(gt=0, lt=1)] = 0.5
    vad_min_silence_s: Seconds = 0.2
    vad_min_speech_s: Seconds = 0.05

    @model_validator(mode="after")
    def _delays_ordered(self) -> Self:
        if self.min_endpointing_delay_s > self.max_endpointing_delay_s:
            raise ValueError("min_endpointing_delay_s must not exceed max_endpointing_delay_s")
        return self


class WorkerConfig(_Strict):
    """livekit-agents worker process settings."""

    agent_name: Annotated[str, Field(min_length=1)] = "voicestack-agent"
    """Explicit dispatch name: dispatch rules and rooms name it in ``room_config.agents``."""
    num_idle_processes: Annotated[int, Field(ge=0, le=64)] = 1
    load_threshold: Annotated[float, Field(gt=0, le=1)] = 0.9
    """Load at which LiveKit stops dispatching to this worker; only with
    ``fallback.on_overload: ring`` (else the job itself answers a call beyond capacity)."""
    drain_timeout_s: Annotated[int, Field(ge=1)] = 3600
    initialize_process_timeout_s: Seconds = 60.0
    """Job processes import livekit-agents and load Silero; 10 s (the default) is too short
    on a busy 2-core machine."""
    http_port: Annotated[int, Field(ge=0, le=65535)] = 0
    """The worker's health server; 0 picks a free port."""
    http_host: Annotated[str, Field(min_length=1)] = "127.0.0.1"
    """Address of the health server and of the Prometheus endpoint (livekit-agents binds both
    on one host). A container must use ``0.0.0.0`` for Prometheus to reach the endpoint."""
    prometheus_port: Annotated[int, Field(ge=0, le=65535)] | None = None
    """Serve Prometheus ``/metrics`` here (``lk_agents_*`` and ``voicestack_agent_*``, job
    processes included); 0 or null: off. ``voicestack agent start --prometheus-port``
    overrides it (the loopback stack passes a free port)."""
    log_transcripts: bool = False
    """Put what callers and the agent said on per-turn log records. Off: callers' words are
    personal data, and a JSON log handler ships every field of a record."""


class FallbackMessages(_Strict):
    """What the caller hears when something fails. Rendered once by the worker ahead of any
    call (and cached on disk), so playing one never needs the inference server."""

    hold: str = "I'm sorry, I'm having a technical problem. Please hold on for a moment."
    still_holding: str = "Thank you for holding. I'm still working on it."
    resume: str = "Thank you for holding. Could you please say that again?"
    recovered: str = "I'm sorry, we were cut off for a moment. I'm back. How can I help you?"
    transfer: str = "I'm transferring you to a colleague now. Please stay on the line."
    goodbye: str = (
        "I'm sorry, we can't help you right now because of a technical problem. "
        "Please call again later. Goodbye."
    )
    busy: str = "All our lines are busy right now. Please call again in a few minutes. Goodbye."


class FallbackConfig(_Strict):
    """No dead air: how a call survives a fault (docs/reliability.md)."""

    messages: FallbackMessages = FallbackMessages()
    transfer_to: str = ""
    """Where a call goes when the agent cannot recover: a name of the flows file's
    ``transfer_targets`` (or one of their URIs); nothing else is ever dialled. Empty: the
    caller hears ``goodbye`` and the call is hung up."""
    recovery_timeout_s: Seconds = 25.0
    """How long a call holds (hearing ``hold``, then ``still_holding`` every
    ``hold_repeat_s``) for the inference server to serve again before it is ended."""
    hold_repeat_s: Seconds = 7.0
    max_faults_per_call: Annotated[int, Field(ge=1, le=100)] = 3
    """After this many faults in one call it is transferred or ended instead of held again."""
    on_overload: Literal["busy_message", "reject", "ring"] = "busy_message"
    """A call beyond the inference server's capacity: hear ``busy`` and be hung up; be
    rejected before it is answered (the room is deleted, livekit-sip ends the INVITE); or
    ``ring``: the worker reports itself full (``worker.load_threshold``), LiveKit dispatches
    no job and the call rings until the trunk's ringing timeout (the PBX may overflow it)."""
    stt_final_timeout_s: Seconds = 2.5
    """Deadline for a final transcript after the end of the caller's speech (a flush)."""
    llm_first_token_timeout_s: Seconds = 6.0
    """Deadline for the LLM's first token: it includes prefilling the prompt, which after a
    history trim takes seconds on a CPU. A hung server is noticed sooner by the heartbeat."""
    llm_reply_timeout_s: Seconds = 2.5
    """Deadline for each next LLM token."""
    tts_audio_timeout_s: Seconds = 2.5
    """Deadline for TTS audio once the text to speak is complete (flush or end of input)."""
    heartbeat_s: Seconds = 2.0
    """WebSocket ping interval to the inference server; no pong within half of it fails the
    stream (a hung or stopped server is noticed even while no answer is due)."""
    cache_dir: str = ""
    """Where rendered fallback audio is kept (empty: ``$XDG_CACHE_HOME/voicestack``)."""


class AgentConfig(_Strict):
    persona: PersonaConfig
    inference: InferenceClientConfig = InferenceClientConfig()
    llm: LLMSettings = LLMSettings()
    turn: TurnConfig = TurnConfig()
    worker: WorkerConfig = WorkerConfig()
    fallback: FallbackConfig = FallbackConfig()
    records: RecordsConfig = RecordsConfig()
    flows: Annotated[str, Field(min_length=1)] | None = None
    """Call flows file (config/flows.yaml), relative to this file; None: one default line."""


def load_agent_config(path: str | Path) -> AgentConfig:
    """Read and validate ``config/agent.yaml`` (raises ``ConfigError`` naming file and key)."""
    return load_model(path, AgentConfig)


def rebase_flows(data: dict[str, object], source: Path) -> None:
    """In raw agent-config ``data`` read from ``source``: make a relative ``flows`` path
    absolute, so a derived config written elsewhere (a load-test variant, the container's
    copy) still finds the flows file next to its source."""
    flows = data.get("flows")
    if isinstance(flows, str) and not Path(flows).is_absolute():
        data["flows"] = str((source.parent / flows).resolve())


def flows_path(cfg: AgentConfig, config_path: str | Path) -> Path | None:
    """Where ``cfg.flows`` points, relative to the agent config file that named it."""
    if cfg.flows is None:
        return None
    return (Path(config_path).parent / cfg.flows).resolve()


def load_call_flows(cfg: AgentConfig, config_path: str | Path) -> FlowsConfig:
    """The call flows ``cfg`` names (validated; ``ConfigError`` naming the file), or the one
    default line without a flows file. ``fallback.transfer_to`` must be one of its targets."""
    path = flows_path(cfg, config_path)
    flows = load_flows(path) if path is not None else DEFAULT_FLOWS
    target = cfg.fallback.transfer_to
    if (
        target
        and target not in flows.transfer_targets
        and (target not in flows.transfer_targets.values())
    ):
        raise ConfigError(
            f"{config_path}: fallback.transfer_to {target!r} is not a transfer target of "
            f"{path or 'the flows file'} (transfer_targets: "
            f"{', '.join(flows.transfer_targets) or 'none'})"
        )
    return flows
