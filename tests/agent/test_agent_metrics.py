"""Agent-side Prometheus metrics: a turn's timings land in the right histograms, and values
recorded in a job process reach the collector the worker's main process serves ``/metrics``
from (prometheus_client multiprocess mode)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from prometheus_client import CollectorRegistry
from prometheus_client.multiprocess import MultiProcessCollector

from worker.agent.components import AGENT_METRICS_PORT_ENV, agent_spec
from worker.agent.turn_metrics import (
    RESPONSE_METRIC,
    STAGE_METRIC,
    TurnMetricsLog,
    TurnMetricsRecorder,
)
from worker.config.agent import WorkerConfig
from worker.config.stack import Profile
from worker.stack.render import render_stack

ROOT = Path(__file__).resolve().parents[2]


def _stage(registry: CollectorRegistry, stage: str, suffix: str) -> float | None:
    return registry.get_sample_value(f"{STAGE_METRIC}_{suffix}", {"stage": stage})


def test_a_turn_is_recorded_per_stage_and_as_response_latency() -> None:
    registry = CollectorRegistry()
    log = TurnMetricsLog("c1", TurnMetricsRecorder(registry))
    # The greeting answers no user turn: its TTS timing counts, there is no response latency.
    log.on_message("assistant", "Hello!", {"tts_node_ttfb": 0.12})
    log.on_message("user", "Hi", {"end_of_turn_delay": 0.4, "transcription_delay": 0.3})
    log.on_message(
        "assistant",
        "Sure.",
        {"llm_node_ttft": 0.25, "tts_node_ttfb": 0.08, "e2e_latency": 1.2},
    )
    assert _stage(registry, "end_of_utterance", "sum") == pytest.approx(0.4)
    assert _stage(registry, "stt", "sum") == pytest.approx(0.3)
    assert _stage(registry, "llm_ttft", "count") == 1
    assert _stage(registry, "tts_ttfb", "count") == 2
    assert _stage(registry, "tts_ttfb", "sum") == pytest.approx(0.2)
    assert registry.get_sample_value(f"{RESPONSE_METRIC}_count") == 1
    assert registry.get_sample_value(f"{RESPONSE_METRIC}_sum") == pytest.approx(1.2)
    # 1.2 s falls in the 1.5 s bucket, not in the 1.0 s one.
    assert registry.get_sample_value(f"{RESPONSE_METRIC}_bucket", {"le": "1.0"}) == 0
    assert registry.get_sample_value(f"{RESPONSE_METRIC}_bucket", {"le": "1.5"}) == 1


def test_unmeasured_and_negative_timings_are_not_observed() -> None:
    registry = CollectorRegistry()
    log = TurnMetricsLog("c2", TurnMetricsRecorder(registry))
    log.on_message("user", "Hi", {"end_of_turn_delay": -0.01})  # clock skew
    log.on_message("assistant", "Sure.", {})  # interrupted before any audio
    for stage in ("end_of_utterance", "stt", "llm_ttft", "tts_ttfb"):
        assert not _stage(registry, stage, "count"), stage
    assert not registry.get_sample_value(f"{RESPONSE_METRIC}_count")
    # Messages that are neither user nor assistant record nothing and complete no turn.
    assert log.on_message("system", "x", {"e2e_latency": 1.0}) is None
    assert not registry.get_sample_value(f"{RESPONSE_METRIC}_count")


def _run_python(code: str, multiproc_dir: Path | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "PROMETHEUS_MULTIPROC_DIR"}
    if multiproc_dir is not None:
        env["PROMETHEUS_MULTIPROC_DIR"] = str(multiproc_dir)
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


def test_turns_recorded_in_a_job_process_reach_the_main_process_collector(
    tmp_path: Path,
) -> None:
    # A job process: started with PROMETHEUS_MULTIPROC_DIR set, records one turn, exits.
    _run_python(
        """
        from worker.agent.turn_metrics import TurnMetricsLog
        log = TurnMetricsLog("job-1")
        log.on_message("user", "Hi", {"end_of_turn_delay": 0.5, "transcription_delay": 0.2})
        log.on_message("assistant", "Sure.", {"llm_node_ttft": 0.3, "e2e_latency": 0.9})
        """,
        tmp_path,
    )
    # The main process's /metrics handler: a MultiProcessCollector over the same directory.
    registry = CollectorRegistry()
    MultiProcessCollector(registry, path=str(tmp_path))
    assert registry.get_sample_value(f"{RESPONSE_METRIC}_count") == 1
    assert registry.get_sample_value(f"{RESPONSE_METRIC}_sum") == pytest.approx(0.9)
    assert _stage(registry, "end_of_utterance", "sum") == pytest.approx(0.5)
    assert _stage(registry, "llm_ttft", "count") == 1


def test_enable_multiprocess_after_prometheus_client_was_imported(tmp_path: Path) -> None:
    # The voicestack CLI imports prometheus_client before `agent start` runs; values the main
    # process makes afterwards (livekit's labelled worker-load gauge) must still be shared.
    out = _run_python(
        """
        import json, os
        import prometheus_client
        from worker.agent.metrics_export import enable_multiprocess
        path, created = enable_multiprocess()
        gauge = prometheus_client.Gauge("lk_test_load", "load", ["nodename"])
        gauge.labels(nodename="n").set(0.75)
        print(json.dumps({"path": path, "created": created}))
        """,
        None,
    )
    made = json.loads(out)
    assert made["created"] and Path(made["path"]).is_dir()
    try:
        registry = CollectorRegistry()
        MultiProcessCollector(registry, path=made["path"])
        samples = [s for m in registry.collect() if m.name == "lk_test_load" for s in m.samples]
        assert [s.value for s in samples] == [0.75]
    finally:
        for f in Path(made["path"]).iterdir():
            f.unlink()
        Path(made["path"]).rmdir()
    # An existing directory (a container may mount one) is kept, not replaced.
    out = _run_python(
        """
        import json
        from worker.agent.metrics_export import enable_multiprocess
        print(json.dumps(enable_multiprocess()))
        """,
        tmp_path,
    )
    assert json.loads(out) == [str(tmp_path), False]


def test_prometheus_port_config_and_loopback_spec() -> None:
    assert WorkerConfig().prometheus_port is None
    with pytest.raises(ValueError, match="prometheus_port"):
        WorkerConfig(prometheus_port=70000)
    stack = render_stack(Profile.LOOPBACK, {})
    spec = agent_spec(stack, ready_port=1, drain_timeout_s=5.0)
    port = int(stack.env[AGENT_METRICS_PORT_ENV])
    argv = list(spec.argv)
    # A loopback stack's agent never uses the config's fixed 9464: parallel stacks would clash.
    assert argv[argv.index("--prometheus-port") + 1] == str(port) and port != 9464
    assert any(p.port == port and p.host == "127.0.0.1" for p in spec.ports)
    # Built twice (the plan and the supervisor), the stack keeps one port.
    again = agent_spec(stack, ready_port=1, drain_timeout_s=5.0)
    assert list(again.argv)[argv.index("--prometheus-port") + 1] == str(port)


def test_a_later_agent_never_gets_the_metrics_port_as_its_ready_port(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # The stack keeps its metrics port while agents come and go (one per test module); once
    # the last agent stopped, the kernel may offer that port again (seen in a telephony run).
    import worker.agent.components as components

    stack = render_stack(Profile.LOOPBACK, {})
    agent_spec(stack, ready_port=1, drain_timeout_s=5.0)
    metrics = int(stack.env[AGENT_METRICS_PORT_ENV])
    offered = iter([metrics, metrics, 40001])
    monkeypatch.setattr(components, "free_port", lambda host="127.0.0.1": next(offered))
    spec = agent_spec(stack, drain_timeout_s=5.0)
    argv = list(spec.argv)
    assert argv[argv.index("--ready-port") + 1] == "40001"
    assert spec.health is not None and spec.health.port == 40001
    assert sorted(p.port for p in spec.ports) == sorted([40001, metrics])


def test_agent_start_rejects_a_bad_prometheus_port() -> None:
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "worker.cli",
            "agent",
            "start",
            "--config",
            str(ROOT / "config" / "agent.yaml"),
            "--prometheus-port",
            "70000",
        ],
        cwd=ROOT,
        env={"PATH": "/usr/bin:/bin", "HF_HUB_OFFLINE": "1"},
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert proc.returncode == 2
    assert "--prometheus-port 70000 is not a port number" in proc.stderr
