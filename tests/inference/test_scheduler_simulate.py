"""The virtual-time simulation: exact on one call, and the deadline scheduler against the serial
baseline under contention (virtual seconds, never wall-clock)."""

from __future__ import annotations

import pytest

from worker.inference.scheduler import Engine, SchedulingConfig
from worker.inference.scheduler.simulate import (
    CPU_PROFILES,
    GPU_PROFILES,
    EngineProfile,
    Workload,
    compare,
    simulate,
)

SIMPLE = {
    Engine.STT: EngineProfile(0.0, 0.0, 0.010),  # 10 ms per second of audio
    Engine.LLM: EngineProfile(0.010, 0.0, 0.0),  # 10 ms per step, prefill included
    Engine.TTS: EngineProfile(0.005, 0.0, 0.0),
}


@pytest.mark.parametrize("mode", ["deadline", "serial"])
def test_one_call_has_exactly_the_engine_step_latencies(mode: str) -> None:
    w = Workload(calls=1, turns_per_call=2, speech_s=(3.0, 3.0), interim_every_s=None)
    r = simulate(w, mode, SIMPLE)  # type: ignore[arg-type]
    assert r.turns_completed == 2 and r.failed_turns == 0 and r.refused == 0
    assert r.latencies["stt_final"] == pytest.approx([0.030, 0.030])
    # Prefill yields token 1; the 8-token first clause ends after 8 steps of 10 ms.
    assert r.latencies["llm_first_clause"] == pytest.approx([0.110, 0.110])
    assert r.latencies["tts_first"] == pytest.approx([0.115, 0.115])
    assert r.deadline_misses == {"stt": 0, "llm": 0, "tts": 0}


def test_deadline_scheduler_beats_the_serial_baseline_under_cpu_contention() -> None:
    res = compare(Workload(calls=20, seed=1), CPU_PROFILES)
    for r in res.values():
        assert r.turns_completed == 60 and r.failed_turns == 0
    deadline, serial = res["deadline"], res["serial"]
    assert deadline.percentile("tts_first", 95) < 0.5 * serial.percentile("tts_first", 95)
    assert deadline.mean_batch["llm"] > 1.5 and serial.mean_batch["llm"] == 1.0


def test_gpu_like_engines_batch_and_keep_latency_flat_with_load() -> None:
    gpu = SchedulingConfig.model_validate({e: {"max_batch": 64} for e in ("stt", "llm", "tts")})
    burst = Workload(calls=50, seed=2, stagger_s=0.05)  # 50 calls start within 2.5 s
    light = simulate(Workload(calls=2, seed=2), "deadline", GPU_PROFILES, gpu)
    heavy = simulate(burst, "deadline", GPU_PROFILES, gpu)
    serial = simulate(burst, "serial", GPU_PROFILES, gpu)
    assert heavy.turns_completed == serial.turns_completed == 150
    assert heavy.mean_batch["llm"] > 3 and serial.mean_batch["llm"] == 1.0
    assert heavy.deadline_misses["tts"] <= 2
    assert heavy.percentile("tts_first", 95) < 1.6 * light.percentile("tts_first", 95)
    assert heavy.percentile("tts_first", 95) < 0.1 * serial.percentile("tts_first", 95)


def test_simulation_is_deterministic_per_seed() -> None:
    a = simulate(Workload(calls=5, seed=3))
    b = simulate(Workload(calls=5, seed=3))
    c = simulate(Workload(calls=5, seed=4))
    assert a.latencies == b.latencies and a.end_time == b.end_time
    assert a.latencies != c.latencies


def test_refusals_at_the_queue_bound_fail_turns_without_losing_count() -> None:
    config = SchedulingConfig.model_validate({"llm": {"max_waiting": 1}})
    r = simulate(Workload(calls=10, seed=5), "serial", CPU_PROFILES, config)
    assert r.refused > 0 and r.failed_turns > 0
    assert r.turns_completed + r.failed_turns == 30
    with pytest.raises(ValueError, match="no latencies"):
        r.percentile("nonexistent", 50)
    assert set(r.summary()) >= {"stt_final", "tts_first"}
