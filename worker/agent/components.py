"""Process specs for the voice side of the stack: the inference server and the agent worker.

They plug into the control plane two ways: ``voicestack up --components ...,inference,agent``
through :data:`worker.stack.plan.COMPONENT_BUILDERS` (registered by :func:`register_components`,
which ``voicestack``'s CLI runs when it loads this package's commands), and the loopback test
fixture / demo through :func:`voice_specs` passed as ``extra_specs``.
"""

from __future__ import annotations

from pathlib import Path

from worker.config.agent import load_agent_config
from worker.config.records import LIVE_URL_ENV
from worker.config.stack import Profile
from worker.offline import OFFLINE_ENV
from worker.stack.plan import COMPONENT_BUILDERS, PlanContext, voicestack_argv
from worker.stack.ports import free_port
from worker.stack.process import HealthCheck, PortSpec, ProcessSpec
from worker.stack.render import RenderedStack, RunFiles, project_root

__all__ = [
    "AGENT_METRICS_PORT_ENV",
    "INFERENCE_PORT_ENV",
    "agent_spec",
    "inference_spec",
    "inference_url",
    "redis_env",
    "register_components",
    "voice_specs",
]

INFERENCE_PORT_ENV = "VOICESTACK_INFERENCE_PORT"
INFERENCE_HOST_ENV = "VOICESTACK_INFERENCE_HOST"
AGENT_METRICS_PORT_ENV = "VOICESTACK_AGENT_METRICS_PORT"
"""Where a loopback stack's agent serves Prometheus ``/metrics`` (kept in the rendered env)."""


def inference_url(stack: RenderedStack) -> str:
    """Where this stack's inference server listens.

    Loopback picks a free port once and keeps it in the rendered environment, so that the
    inference server's spec and the agent's spec (built separately) agree on it.
    """
    host = stack.env.get(INFERENCE_HOST_ENV, "127.0.0.1")
    if INFERENCE_PORT_ENV not in stack.env:
        port = free_port(host) if stack.profile is Profile.LOOPBACK else 8765
        stack.env[INFERENCE_PORT_ENV] = str(port)
    return f"http://{host}:{stack.env[INFERENCE_PORT_ENV]}"


def inference_spec(
    stack: RenderedStack, *, config: Path | None = None, fault_injection: bool = False
) -> ProcessSpec:
    """``voicestack inference-server``; ready when ``/readyz`` answers 200 (models loaded).

    Once healthy, three failed ``/readyz`` probes in a row (hung, a dead engine thread, an
    engine failing every step) make the supervisor kill and restart it. ``fault_injection``
    (the reliability suite only) serves ``/v1/faults``.
    """
    url = inference_url(stack)
    host, port = url.removeprefix("http://").rsplit(":", 1)
    cfg = config or project_root() / "config" / "inference.yaml"
    faults = ("--fault-injection",) if fault_injection else ()
    return ProcessSpec(
        name="inference",
        argv=voicestack_argv(
            "inference-server", "--config", str(cfg), "--host", host, "--port", port, *faults
        ),
        env={**OFFLINE_ENV, "OMP_NUM_THREADS": "1"},
        health=HealthCheck("http", host, int(port), "/readyz"),
        # Models load from disk; on a busy 2-core machine that can take a minute.
        start_timeout_s=180,
        stop_timeout_s=15,
        ports=(PortSpec(host, int(port)),),
        liveness_failures=3,
    )


def agent_spec(
    stack: RenderedStack,
    *,
    config: Path | None = None,
    ready_port: int | None = None,
    drain_timeout_s: float | None = None,
) -> ProcessSpec:
    """``voicestack agent start`` against this stack's LiveKit and inference server.

    After SIGTERM the worker drains live calls (up to the config's ``drain_timeout_s``); the
    supervisor waits that long plus a margin before it kills the process group, unless
    ``drain_timeout_s`` sets a shorter bound (tests, the demo: their calls are over by then).

    Prometheus ``/metrics``: a loopback stack's agent gets a free port (recorded in
    ``stack.env[AGENT_METRICS_PORT_ENV]``), so parallel stacks never fight over the config's
    fixed ``worker.prometheus_port``; other profiles use the config's port.
    """
    port = ready_port if ready_port is not None else free_port("127.0.0.1")
    cfg = config or project_root() / "config" / "agent.yaml"
    if drain_timeout_s is None:
        drain_timeout_s = load_agent_config(cfg).worker.drain_timeout_s + 15.0
    metrics: tuple[str, ...] = ()
    ports = [PortSpec("127.0.0.1", port)]
    if stack.profile is Profile.LOOPBACK:
        if AGENT_METRICS_PORT_ENV not in stack.env:
            stack.env[AGENT_METRICS_PORT_ENV] = str(free_port("127.0.0.1"))
        metrics_port = int(stack.env[AGENT_METRICS_PORT_ENV])
        # The metrics port stays in stack.env for the stack's life while agents come and go
        # (one per test module): the kernel may hand it out again as a new ready port.
        while port == metrics_port and ready_port is None:
            port = free_port("127.0.0.1")
        ports[0] = PortSpec("127.0.0.1", port)
        metrics = ("--prometheus-port", str(metrics_port))
        ports.append(PortSpec("127.0.0.1", metrics_port))
    return ProcessSpec(
        name="agent",
        argv=voicestack_argv(
            "agent",
            "start",
            "--config",
            str(cfg),
            "--inference-url",
            inference_url(stack),
            "--ready-port",
            str(port),
            *metrics,
        ),
        env={
            "LIVEKIT_URL": stack.ws_url,
            "LIVEKIT_API_KEY": stack.api_key,
            "LIVEKIT_API_SECRET": stack.api_secret,
            **OFFLINE_ENV,
            "OMP_NUM_THREADS": "1",
            "LIVEKIT_AGENTS_PRELOAD_LOCAL_INFERENCE": "0",
            **redis_env(stack),
        },
        # Ready only once registered with LiveKit: a call dispatched earlier would be lost.
        health=HealthCheck("http", "127.0.0.1", port, "/readyz"),
        start_timeout_s=90,
        stop_timeout_s=drain_timeout_s,
        ports=tuple(ports),
    )


def redis_env(stack: RenderedStack) -> dict[str, str]:
    """Live call events go over the stack's own Redis (``records.live_url`` otherwise)."""
    address = stack.env.get("REDIS_ADDRESS")
    return {LIVE_URL_ENV: f"redis://{address}/0"} if address else {}


def voice_specs(
    stack: RenderedStack, files: RunFiles, *, fault_injection: bool = False
) -> list[ProcessSpec]:
    """``extra_specs`` for :func:`worker.stack.loopback.loopback_stack`: inference, then agent."""
    return [
        inference_spec(stack, fault_injection=fault_injection),
        agent_spec(stack, drain_timeout_s=30.0),
    ]


def _inference_builder(ctx: PlanContext) -> ProcessSpec:
    return inference_spec(ctx.stack)


def _agent_builder(ctx: PlanContext) -> ProcessSpec:
    return agent_spec(ctx.stack)


def register_components() -> None:
    """Make ``inference`` and ``agent`` known to ``voicestack up --components`` (idempotent).

    Appended after the LiveKit core, so they start after it and stop before it.
    """
    COMPONENT_BUILDERS.setdefault("inference", _inference_builder)
    COMPONENT_BUILDERS.setdefault("agent", _agent_builder)
