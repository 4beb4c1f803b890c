"""The worker's load report and its command line: bad input gets a clear error, never a
half-started worker."""

from __future__ import annotations

import asyncio
import subprocess
import sys
from pathlib import Path

from fake_inference import fake_inference

from worker.agent.load import InferenceLoad

ROOT = Path(__file__).resolve().parents[2]


async def test_load_reports_inference_capacity_not_cpu() -> None:
    async with fake_inference() as srv:
        load = InferenceLoad(srv.url)
        assert await asyncio.to_thread(load) == 0.0
        srv.active["llm"] = 4  # the fake's load is active streams / 10
        assert await asyncio.to_thread(load) == 0.4
        srv.active["llm"] = 12  # load 1.0, not accepting
        assert await asyncio.to_thread(load) == 1.0


def test_load_of_unreachable_server_is_full() -> None:
    assert InferenceLoad("http://127.0.0.1:9", timeout=0.3)() == 1.0


async def test_a_ceiling_keeps_a_full_worker_dispatchable() -> None:
    async with fake_inference() as srv:
        load = InferenceLoad(srv.url, ceiling=0.95)
        srv.active["llm"] = 12  # full, not accepting
        assert await asyncio.to_thread(load) == 0.95
    assert InferenceLoad("http://127.0.0.1:9", timeout=0.3, ceiling=0.95)() == 0.95


def _agent_start(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "worker.cli", "agent", "start", *args],
        cwd=ROOT,
        env=env if env is not None else {"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )


def test_agent_start_rejects_a_bad_config(tmp_path: Path) -> None:
    bad = tmp_path / "agent.yaml"
    bad.write_text("persona: {system_prompt: x, greeting: hi, voice_speed: 2}\n")
    proc = _agent_start("--config", str(bad))
    assert proc.returncode == 2
    assert "persona.voice_speed" in proc.stderr


def test_agent_start_needs_livekit_settings() -> None:
    proc = _agent_start("--config", str(ROOT / "config" / "agent.yaml"))
    assert proc.returncode == 2
    assert "LIVEKIT_URL" in proc.stderr and "LIVEKIT_API_SECRET" in proc.stderr


def test_the_job_decides_about_overload_unless_told_to_ring() -> None:
    """busy_message/reject: the worker takes every call (its job plays the busy message or
    rejects), since a worker reporting itself full leaves the caller ringing; ring: LiveKit's
    own refusal at worker.load_threshold."""
    import math

    from worker.agent.runner import dispatch_threshold
    from worker.config.agent import load_agent_config

    cfg = load_agent_config(ROOT / "config" / "agent.yaml")
    assert cfg.fallback.on_overload == "busy_message"
    assert dispatch_threshold(cfg) == math.inf
    ring = cfg.model_copy(
        update={"fallback": cfg.fallback.model_copy(update={"on_overload": "ring"})}
    )
    assert dispatch_threshold(ring) == cfg.worker.load_threshold
