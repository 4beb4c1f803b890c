"""An INVITE flood against the whole stack while real calls are live: 200 INVITEs/s from
a source no trunk allows, for the whole time the calls run (the calls' own INVITEs go out under
it). The SIP edge must drop the flood before parsing it (no reply; livekit-sip never sees it),
every live call must be answered and every turn answered, nothing may crash or restart, and the
callers' voice-to-voice p95 must stay within +20% of the same calls without the flood.

Design against noise. On two cores three calls keep the inference server near saturation, where
the latency of a whole phase swings with how the calls' turns happen to collide: a CI run of the
first design (quiet / flood / quiet / flood, 9 answers per phase) saw its two quiet phases differ
x1.56 by themselves, and the first phase after the warm-up was the slowest in every run. So: a
warm-up phase identical to the measured ones (not counted), then quiet / flood / flood / quiet
twice (drift hits both kinds alike), and the criterion is on the typical phase, the median over
each kind's four phase p95s, which one unlucky phase cannot move. The pooled p95 is printed too.

Without the edge (livekit-sip alone, 2026-12-05): livekit-sip answered every flood INVITE with
100 and 180, asked livekit-server about each, and the live calls' p95 went from 1771 to 4115 ms
(x2.32)."""

from __future__ import annotations

import asyncio
from collections import Counter
from pathlib import Path

import numpy as np
import psutil
import pytest
from sip_flood import Flood

from worker.agent.components import agent_spec, inference_spec
from worker.bench.loadtest import CallResult, LoadtestOptions, place_calls
from worker.bench.loadtest_cli import variant_config
from worker.caller.sip import SIP_SAMPLE_RATE
from worker.caller.utterances import CallerTurn, build_turn_script
from worker.stack.loopback import loopback_stack
from worker.stack.plan import SIP_COMPONENTS
from worker.stack.process import ProcessSpec
from worker.stack.render import RenderedStack, RunFiles, project_root
from worker.telephony.provision import provision_loopback

pytestmark = [pytest.mark.integration, pytest.mark.sip, pytest.mark.security, pytest.mark.e2e]

# The issue asks for five live calls; on two cores the inference server's admission control
# refuses a fifth (one more call would put the LLM engine at 313% of capacity), so the test runs
# the calls this box serves in full at once.
CALLS = 3
RATE_PER_S = 200.0
FLOOD_SOURCE = "127.0.0.2"  # loopback, but not the trunk's allowed 127.0.0.1/32
TURNS = (
    CallerTurn(("Hello, do you deliver on weekends?",), wait_s=10.0),
    CallerTurn(("What payment methods do you accept?",), wait_s=10.0),
)
PHASES = ("quiet", "flood", "flood", "quiet") * 2
MAX_SLOWDOWN = 1.20


def _latencies(calls: list[CallResult]) -> list[float]:
    problems = [
        f"call {c.call}: {c.error or 'no greeting'}" for c in calls if c.error or not c.greeted
    ]
    assert not problems, problems
    unanswered = [(c.call, t.text) for c in calls for t in c.turns if t.v2v_s is None]
    assert not unanswered, f"turns without an answer: {unanswered}"
    return [t.v2v_s for c in calls for t in c.turns if t.v2v_s is not None]


def _cpu_s(pid: int | None) -> float:
    """CPU seconds of ``pid`` and its children (kamailio forks its workers)."""
    if pid is None:
        return 0.0
    try:
        proc = psutil.Process(pid)
        total = 0.0
        for p in (proc, *proc.children(recursive=True)):
            times = p.cpu_times()
            total += times.user + times.system
        return total
    except psutil.Error:
        return 0.0


def test_invite_flood_leaves_live_calls_alone(tmp_path: Path) -> None:
    # Greedy answers: the same questions get the same answers in every phase, so the phases
    # compare the flood and not the sampled answers' lengths (temperature 0.6 varied them).
    agent_cfg = variant_config(
        project_root() / "config" / "agent.yaml", "llm.temperature=0", tmp_path / "agent.yaml"
    )

    def voice(stack: RenderedStack, files: RunFiles) -> list[ProcessSpec]:
        return [inference_spec(stack), agent_spec(stack, config=agent_cfg, drain_timeout_s=30.0)]

    with loopback_stack(tmp_path / "stack", SIP_COMPONENTS, extra_specs=voice) as st:
        tel, _ = provision_loopback(st)
        number = tel.trunks[0].numbers[0]
        assert st.sip_address is not None
        target = st.sip_address
        script = build_turn_script(
            tmp_path / "script", TURNS, sample_rate=SIP_SAMPLE_RATE, greeting_wait_s=8.0
        )
        opts = LoadtestOptions(calls=CALLS, stagger_s=2.0)
        before = {s.name: s.pid for s in st.supervisor.status()}
        asyncio.run(place_calls(opts, script, target, number, tmp_path / "w"))
        phases: list[tuple[str, list[float]]] = []
        floods: list[Flood] = []
        cpu = {"sip-edge": 0.0, "sip": 0.0, "livekit": 0.0}
        for i, phase in enumerate(PHASES):
            flood = Flood(FLOOD_SOURCE, target, number, RATE_PER_S)
            if phase == "flood":
                used = {name: _cpu_s(before[name]) for name in cpu}
                flood.start()
                floods.append(flood)
            calls = asyncio.run(place_calls(opts, script, target, number, tmp_path / f"p{i}"))
            if phase == "flood":
                flood.stop()
                for name in cpu:
                    cpu[name] += _cpu_s(before[name]) - used[name]
            phases.append((phase, _latencies(calls)))
        after = st.supervisor.status()
        sip_log = (st.run_dir / "sip.log").read_text(errors="replace")
    assert {s.name: s.pid for s in after} == before, "a component crashed or restarted"
    assert all(s.restarts == 0 for s in after), after
    sent = sum(f.sent for f in floods)
    seconds = sum(f.elapsed_s for f in floods)
    replies = sum((f.replies for f in floods), start=Counter[str]())
    p95 = {
        kind: [float(np.percentile(v, 95)) for k, v in phases if k == kind]
        for kind in ("quiet", "flood")
    }
    pooled = {kind: [x for k, v in phases if k == kind for x in v] for kind in p95}
    quiet, flooded = (float(np.percentile(pooled[k], 95)) for k in ("quiet", "flood"))
    typical = {kind: float(np.median(v)) for kind, v in p95.items()}
    print(
        f"flood: {sent} INVITEs from {FLOOD_SOURCE} in {seconds:.0f} s ({sent / seconds:.0f}/s), "
        f"replies {dict(replies)}; CPU during the flood phases: "
        + ", ".join(f"{k} {v / seconds * 100:.1f}%" for k, v in cpu.items())
        + f"; {CALLS} live calls per phase, voice-to-voice p95 (median over phases) quiet "
        f"{typical['quiet'] * 1000:.0f} ms, under flood {typical['flood'] * 1000:.0f} ms "
        f"(x{typical['flood'] / typical['quiet']:.2f}; per phase quiet "
        f"{[round(x * 1000) for x in p95['quiet']]}, "
        f"flood {[round(x * 1000) for x in p95['flood']]} ms); pooled p95 "
        f"{quiet * 1000:.0f} / {flooded * 1000:.0f} ms (x{flooded / quiet:.2f}); "
        f"p50 {np.percentile(pooled['quiet'], 50) * 1000:.0f} / "
        f"{np.percentile(pooled['flood'], 50) * 1000:.0f} ms"
    )
    assert sent >= 0.9 * RATE_PER_S * seconds
    # The edge drops the flood before parsing it: no reply, and livekit-sip never sees it.
    assert not replies, replies
    assert f'"fromIP": "{FLOOD_SOURCE}"' not in sip_log
    assert typical["flood"] <= MAX_SLOWDOWN * typical["quiet"], p95
