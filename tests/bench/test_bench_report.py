"""Report outputs built from hand-made results: JSON shape, ratios, table, PNG."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.bench.report import SCHEMA, BenchResult, format_report, ratio, write_json, write_plot
from worker.bench.results import STAGES, ModeResult, Outcome, PointResult, TurnRecord


def turn(call: int, k: int, compute: float, outcome: Outcome = Outcome.OK) -> TurnRecord:
    rec = TurnRecord(call_index=call, turn_index=k, utterance_s=2.5)
    if outcome is Outcome.OK:
        rec.stages_ms = {
            "stt_final": compute * 0.3,
            "llm_ttft": compute * 0.3,
            "llm_clause": compute * 0.5,
            "tts_ttfb": compute * 0.2,
            "compute": compute,
        }
        rec.answer_audio_s = 2.0
    else:
        rec.fail(outcome, "llm", "overloaded" if outcome is Outcome.REFUSED else "internal", "x")
    return rec


def point(mode: str, n: int, compute: float, refused: int = 0) -> PointResult:
    turns = [turn(c, 0, compute + c) for c in range(n)]
    turns += [turn(99, k, 0, Outcome.REFUSED) for k in range(refused)]
    return PointResult(mode=mode, n_calls=n, wall_s=10.0, turns=turns, limit_ms=600.0)


def result() -> BenchResult:
    r = BenchResult(
        started_at="2026-01-01T00:00:00+00:00",
        params={"seed": 0},
        report_n=(1, 4, 8),
        limit_ms=600.0,
    )
    r.modes["deadline"] = ModeResult(
        mode="deadline",
        points=[point("deadline", 1, 200), point("deadline", 4, 300), point("deadline", 8, 500)],
        capacity=8,
    )
    r.modes["serial"] = ModeResult(
        mode="serial",
        points=[point("serial", 1, 200), point("serial", 4, 800), point("serial", 8, 2000, 3)],
        capacity=1,
    )
    return r


def test_point_counts_and_verdict() -> None:
    p = point("serial", 8, 2000, refused=3)
    assert (p.completed, p.refused, p.errors) == (8, 3, 0)
    assert p.throughput_tps == pytest.approx(0.8)
    assert not p.passed
    assert point("deadline", 4, 300).passed


def test_json_shape() -> None:
    doc = result().to_json()
    assert doc["schema"] == SCHEMA
    assert set(doc) >= {
        "started_at",
        "machine",
        "params",
        "limit_ms",
        "report_n",
        "modes",
        "ratios",
    }
    assert set(doc["modes"]) == {"deadline", "serial"}
    serial = doc["modes"]["serial"]
    assert serial["capacity"] == 1
    p8 = serial["points"][-1]
    assert p8["n"] == 8 and p8["refused"] == 3 and p8["passed"] is False
    assert set(p8["stages_ms"]) == set(STAGES)
    assert set(p8["stages_ms"]["compute"]) == {"count", "p50", "p95", "p99", "mean", "max"}
    assert len(p8["turns"]) == 11
    assert p8["turns"][-1]["outcome"] == "refused"
    json.dumps(doc)  # plain JSON all the way down


def test_ratios_are_scheduler_over_serial() -> None:
    r = result().ratios()
    assert r["capacity"] == pytest.approx(8.0)
    p95_d4 = result().p95_compute("deadline", 4)
    p95_s4 = result().p95_compute("serial", 4)
    assert p95_d4 is not None and p95_s4 is not None
    assert r["p95_compute"]["4"] == pytest.approx(p95_d4 / p95_s4)
    assert set(r["p95_compute"]) == {"1", "4", "8"}


def test_capacity_at_looser_targets() -> None:
    r = result()
    doc = r.to_json()
    # serial p95 at N=4 is ~803 ms, at N=8 ~2006 ms with refusals: capacity 4 at 1000 ms
    assert doc["modes"]["serial"]["capacity_at_limit_ms"]["1000"] == 4
    assert doc["modes"]["serial"]["capacity_at_limit_ms"]["3000"] == 4  # refusals at N=8
    assert doc["modes"]["deadline"]["capacity_at_limit_ms"]["1000"] == 8
    assert doc["ratios"]["capacity_at_limit_ms"]["1000"] == pytest.approx(2.0)


def test_ratio_undefined_cases() -> None:
    assert ratio(4, 0) is None
    assert ratio(None, 2) is None
    assert ratio(3, 2) == 1.5


def test_table_mentions_capacity_and_ratios() -> None:
    text = format_report(result())
    assert "mode deadline: capacity N=8" in text
    assert "mode serial: capacity N=1" in text
    assert "capacity: 8 vs 1 -> 8.00x" in text
    assert "p95 compute at N=8" in text


def test_missing_baseline_point_prints_na() -> None:
    r = result()
    r.modes["serial"].points = [p for p in r.modes["serial"].points if p.n_calls != 8]
    assert r.ratios()["p95_compute"]["8"] is None
    assert "N=8: " in format_report(r) and "n/a" in format_report(r)


def test_files_written(tmp_path: Path) -> None:
    r = result()
    j = write_json(r, tmp_path / "out" / "run.json")
    assert json.loads(j.read_text())["ratios"]["capacity"] == 8.0
    png = write_plot(r, tmp_path / "out" / "run.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
