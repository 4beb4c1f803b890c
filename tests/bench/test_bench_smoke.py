"""Smoke test of ``voicestack bench inference`` against the real inference server and bundled
models: both scheduling modes, N=1, one turn. It checks the result's structure and that no
turn failed; it asserts no timing (the benchmark measures, the suite does not)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from worker.bench.results import STAGES
from worker.cli import main


@pytest.mark.integration
def test_bench_inference_end_to_end(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    root = Path(__file__).resolve().parents[2]
    out = tmp_path / "out"
    status = main(
        [
            "bench", "inference",
            "--config", str(root / "config" / "inference.yaml"),
            "--n", "1", "--report-n", "1", "--turns", "1", "--no-refine",
            "--point-s", "5", "--stagger-s", "0", "--max-tokens", "12", "--no-warmup",
            "--out-dir", str(out), "--cache-dir", str(tmp_path / "cache"),
        ]
    )  # fmt: skip
    assert status == 0
    [json_path] = out.glob("*.json")
    [png_path] = out.glob("*.png")
    assert png_path.read_bytes()[:4] == b"\x89PNG"
    doc = json.loads(json_path.read_text())
    assert doc["schema"] == "voicestack.bench.inference/1"
    assert list(doc["modes"]) == ["deadline", "serial"]
    for name, mode in doc["modes"].items():
        [point] = mode["points"]
        assert point["n"] == 1
        assert (point["turns_ok"], point["refused"], point["errors"]) == (1, 0, 0), point["turns"]
        assert point["server_idle_after"] is True, f"{name}: streams left open on the server"
        [turn] = point["turns"]
        assert turn["outcome"] == "ok"
        assert set(turn["stages_ms"]) == set(STAGES)
        assert turn["transcript"].strip(), "the real STT heard the synthesized caller"
        assert turn["reply"].strip() and turn["answer_audio_s"] > 0
        assert Path(mode["server_log"]).is_file()
    assert set(doc["ratios"]["p95_compute"]) == {"1"}
    assert doc["ratios"]["p95_compute"]["1"] is not None
