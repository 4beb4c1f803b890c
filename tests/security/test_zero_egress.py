"""Zero egress, proven for the whole stack: ``voicestack demo`` (redis, livekit-server,
livekit-sip, the inference server, the agent worker and a baresip caller: one real SIP call with
a greeting and two answered questions) runs inside a network namespace whose only way out is a
captured veth link. Nothing it does may leave: no DNS lookup, no telemetry, no STUN, no model
hub. A canary packet sent on purpose proves the capture sees what leaves."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
from netns_support import Captured, captured_namespace, kernel_chatter

from worker.stack.render import project_root

pytestmark = [pytest.mark.integration, pytest.mark.sip, pytest.mark.security, pytest.mark.e2e]

CANARY = ("198.51.100.9", 9)  # TEST-NET-2, discard port


def _canary(prefix: list[str]) -> None:
    code = (
        "import socket; s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); "
        f"s.sendto(b'voicestack-canary', {CANARY!r})"
    )
    subprocess.run([*prefix, sys.executable, "-c", code], check=True, timeout=30)


def test_a_whole_sip_call_sends_no_packet_off_the_host(tmp_path: Path) -> None:
    if os.geteuid() != 0:
        pytest.fail("the egress capture needs root (ip netns, dumpcap): run the suite as root")
    root = project_root()
    run_dir = tmp_path / "demo"
    with captured_namespace(tmp_path / "capture") as (ns, packets):
        _canary(ns.exec_prefix)
        env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
        demo = subprocess.run(
            [
                *ns.exec_prefix,
                str(root / ".venv" / "bin" / "voicestack"),
                "demo",
                "--questions",
                "2",
                "--run-dir",
                str(run_dir),
            ],
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
            cwd=root,
        )
    print(demo.stdout[-4000:])
    assert demo.returncode == 0, demo.stdout[-3000:] + demo.stderr[-3000:]
    assert "demo OK" in demo.stdout

    left = [p for p in packets if not kernel_chatter(p)]
    canaries = [p for p in left if p.dst == CANARY[0]]
    assert len(canaries) == 1, f"the capture did not see the canary: {packets[:20]}"
    others: list[Captured] = [p for p in left if p.dst != CANARY[0]]
    assert others == [], f"{len(others)} packet(s) left the stack's namespace: {others[:20]}"


def test_the_namespace_has_no_other_way_out(tmp_path: Path) -> None:
    """The proof above holds only if the veth is the namespace's sole link besides loopback."""
    if os.geteuid() != 0:
        pytest.fail("the egress capture needs root (ip netns, dumpcap): run the suite as root")
    with captured_namespace(tmp_path / "capture") as (ns, _):
        links = subprocess.run(
            [*ns.exec_prefix, "ip", "-o", "link", "show"],
            check=True,
            capture_output=True,
            text=True,
        ).stdout
    names = sorted(line.split(":")[1].strip().split("@")[0] for line in links.splitlines())
    assert len(names) == 2 and "lo" in names, names
