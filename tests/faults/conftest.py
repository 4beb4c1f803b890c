"""The fault suite's stack: the session's redis + livekit-server + livekit-sip, and for this
package an inference server with fault injection on plus a real agent worker, supervised as in
production (crashed or unhealthy children are restarted)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from worker.agent.components import inference_url
from worker.config.telephony import load_telephony
from worker.stack.loopback import LoopbackStack
from worker.stack.supervisor import BackgroundSupervisor
from worker.telephony.provision import provision_loopback


@dataclass(frozen=True)
class FaultStack:
    livekit: LoopbackStack
    voice: BackgroundSupervisor
    inference_url: str
    number: str

    @property
    def sip_address(self) -> tuple[str, int]:
        assert self.livekit.sip_address is not None
        return self.livekit.sip_address

    def provision(self) -> None:
        provision_loopback(self.livekit)


MAX_CALLS = 1
"""The suite's server admits one call: a second concurrent call is beyond its capacity."""


def _one_call_config(dest: Path) -> Path:
    """config/inference.yaml with ``scheduler.admission.max_calls`` = :data:`MAX_CALLS`."""
    import yaml

    from worker.bench.server_proc import write_mode_config
    from worker.stack.render import project_root

    path = write_mode_config(project_root() / "config" / "inference.yaml", "deadline", dest)
    data = yaml.safe_load(path.read_text())
    data["scheduler"]["admission"]["max_calls"] = MAX_CALLS
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return path


# Module scope (the suite is one module): a "package" fixture in a directory without
# __init__.py lives until the end of the session, and this stack's inference server and agent
# still held their ports (and LiveKit's agent name) when tests/telephony started its own.
@pytest.fixture(scope="module")
def fault_stack(sip_stack: LoopbackStack) -> Iterator[FaultStack]:
    from worker.agent.components import agent_spec, inference_spec

    config = _one_call_config(sip_stack.run_dir / "faults" / "inference.yaml")
    specs = [
        inference_spec(sip_stack.rendered, config=config, fault_injection=True),
        agent_spec(sip_stack.rendered, drain_timeout_s=30.0),
    ]
    rendered = sip_stack.rendered
    number = load_telephony(rendered.telephony_path, rendered.env).trunks[0].numbers[0]
    with BackgroundSupervisor(specs, sip_stack.run_dir / "faults") as sup:
        stack = FaultStack(sip_stack, sup, inference_url(sip_stack.rendered), number)
        stack.provision()
        yield stack


@pytest.fixture
def place(fault_stack: FaultStack, tmp_path: Path) -> Callable[..., Any]:
    """``place(questions=..., inject=..., after_utterance=..., on_answer=..., delay_s=...)``:
    one call (see :func:`faults_support.fault_call`), run to its end."""
    from faults_support import fault_call

    def run(**kw: Any) -> Any:
        return asyncio.run(fault_call(fault_stack.sip_address, fault_stack.number, tmp_path, **kw))

    return run
