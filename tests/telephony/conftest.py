"""The telephony suite's stack (see lines_support.py for the three lines it serves)."""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import pytest
import yaml
from lines_support import CLOSED, SALES, SUPPORT, LineStack, agent_config, flows_for

from worker.agent.components import agent_spec, inference_spec, inference_url
from worker.config.telephony import OutboundTrunkConfig, load_telephony
from worker.stack.loopback import LoopbackStack
from worker.stack.ports import free_udp_tcp_port
from worker.stack.supervisor import BackgroundSupervisor
from worker.telephony.provision import provision, provision_loopback


# One stack per module: pytest has no package scope for a directory without __init__.py (a
# "package" or session fixture would outlive the package and hold the inference and agent
# ports, and LiveKit's agent name, when any later module starts its own voice stack).
@pytest.fixture(scope="module")
def line_stack(sip_stack: LoopbackStack) -> Iterator[LineStack]:
    run_dir = sip_stack.run_dir / "telephony"
    run_dir.mkdir(parents=True, exist_ok=True)
    human_port, dead_port, callee_port = (free_udp_tcp_port() for _ in range(3))
    flows = run_dir / "flows.yaml"
    flows.write_text(yaml.safe_dump(flows_for(human_port, dead_port), sort_keys=False))
    agent = agent_config(run_dir, flows)
    rendered = sip_stack.rendered
    tel = load_telephony(rendered.telephony_path, rendered.env)
    trunk = tel.trunks[0].model_copy(update={"numbers": [SUPPORT, SALES, CLOSED]})
    outbound = OutboundTrunkConfig(
        name="lines-out",
        address=f"127.0.0.1:{callee_port}",
        numbers=[SUPPORT],
        destinations=["+1555"],
        ringing_timeout_s=8,
    )
    lines = tel.model_copy(update={"trunks": [trunk], "outbound_trunks": [outbound]})
    telephony = run_dir / "telephony.yaml"
    telephony.write_text(yaml.safe_dump(lines.model_dump(), sort_keys=False))
    specs = [inference_spec(rendered), agent_spec(rendered, config=agent, drain_timeout_s=30.0)]
    with BackgroundSupervisor(specs, run_dir) as sup:
        asyncio.run(
            provision(
                lines,
                sip_stack.livekit_url,
                sip_stack.api_key,
                sip_stack.api_secret,
                edge=sip_stack.rendered.sip_edge_target,  # outbound calls pass the edge too
            )
        )
        try:
            yield LineStack(
                sip_stack, sup, inference_url(rendered), human_port, callee_port, run_dir, lines
            )
        finally:
            provision_loopback(sip_stack)  # the shipped trunk for the other packages
