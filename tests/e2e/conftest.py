"""The voice side on top of the session's LiveKit stack: the real inference server (bundled
models) and a real agent worker, started by the control plane's supervisor."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import pytest

from worker.agent.components import inference_url, voice_specs
from worker.config.agent import load_agent_config
from worker.stack.loopback import LoopbackStack
from worker.stack.render import project_root
from worker.stack.supervisor import BackgroundSupervisor


@dataclass(frozen=True)
class VoiceStack:
    livekit: LoopbackStack
    inference_url: str
    agent_name: str
    supervisor: BackgroundSupervisor
    agent_ready_url: str


@pytest.fixture(scope="module")
def voice_stack(livekit_stack: LoopbackStack) -> Iterator[VoiceStack]:
    specs = voice_specs(livekit_stack.rendered, livekit_stack.files)
    agent = next(s for s in specs if s.name == "agent")
    assert agent.health is not None
    cfg = load_agent_config(project_root() / "config" / "agent.yaml")
    with BackgroundSupervisor(specs, livekit_stack.run_dir / "voice") as sup:
        yield VoiceStack(
            livekit=livekit_stack,
            inference_url=inference_url(livekit_stack.rendered),
            agent_name=cfg.worker.agent_name,
            supervisor=sup,
            agent_ready_url=f"http://127.0.0.1:{agent.health.port}/readyz",
        )
