"""The ``scheduler-sim`` command: JSON output and clear errors."""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

from worker.inference.scheduler import sim_cli


def run(argv: list[str]) -> int:
    parser = argparse.ArgumentParser()
    sim_cli.register(parser.add_subparsers(dest="command", required=True))
    args = parser.parse_args(["scheduler-sim", *argv])
    status: int = args.func(args)
    return status


def test_json_report_has_both_modes(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--calls", "3", "--turns", "2", "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert set(report) == {"deadline", "serial"}
    for mode in report.values():
        assert mode["turns_completed"] == 6 and mode["failed_turns"] == 0
        assert mode["latency_ms"]["tts_first"]["p95_ms"] > 0


def test_table_report(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--calls", "2", "--turns", "1", "--profile", "gpu"]) == 0
    out = capsys.readouterr().out
    assert "deadline: 2 turns done" in out and "serial: 2 turns done" in out


def test_bad_config_is_a_clear_error(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    path = tmp_path / "s.yaml"
    path.write_text("llm: {max_bach: 4}\n")
    assert run(["--config", str(path)]) == 2
    assert "llm.max_bach" in capsys.readouterr().err
    assert run(["--config", str(tmp_path / "missing.yaml")]) == 2
    assert "not found" in capsys.readouterr().err
    assert run(["--calls", "0"]) == 2
