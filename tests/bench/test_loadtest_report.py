"""The load test's caller-side analysis and report on synthetic recordings (no stack): what
counts as answered, cut in, stopped and resumed, and that JSON and PNG are written."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from local_http import serve_app
from synthetic_audio import tone_spans

from worker.agent.turn_metrics import TurnMetrics
from worker.bench.loadtest import ConfigRun, analyse_recording
from worker.bench.loadtest_report import (
    format_table,
    summarize,
    write_json,
    write_plot,
)
from worker.bench.stats import nearest_rank as percentile
from worker.caller.utterances import ScheduledUtterance

RATE = 8000


def _agent_audio(total_s: float, speech: list[tuple[float, float]]) -> np.ndarray:
    return tone_spans(total_s, speech, rate=RATE, hz=250)


SCHEDULE = (
    ScheduledUtterance("Do you deliver on weekends?", 8.0, 10.0),
    ScheduledUtterance("I would like the price", 20.0, 23.0, "paused", ((21.0, 21.5),)),
    ScheduledUtterance("How do I reset it?", 33.0, 34.5),
    ScheduledUtterance("Sorry, how long?", 38.0, 39.5, "barge_in"),
    ScheduledUtterance("What do you accept?", 50.0, 51.5),
    ScheduledUtterance("Mm-hmm.", 55.0, 55.5, "backchannel"),
)
HEARD = [
    (2.0, 6.0),  # greeting
    (10.8, 14.0),  # answer 1: 800 ms
    (21.3, 22.0),  # cut into the pause...
    (24.2, 27.0),  # ...and the answer: 1200 ms after the end
    (35.5, 38.25),  # answer 3, stops 250 ms after the barge-in onset
    (40.5, 43.0),  # answer to the barge-in: 1000 ms
    (52.5, 55.4),  # answer 5, paused 400 ms after the backchannel onset
    (56.5, 58.0),  # resumed 1000 ms after the backchannel ended
]


def test_caller_side_measurements_of_one_call() -> None:
    result = analyse_recording(1, _agent_audio(65, HEARD), RATE, SCHEDULE)
    assert result.greeted and not result.error
    by = {t.index: t for t in result.turns}
    assert by[1].v2v_s == pytest.approx(0.8, abs=0.03)
    assert by[2].cut_in is True and by[2].v2v_s == pytest.approx(1.2, abs=0.03)
    assert by[4].stop_s == pytest.approx(0.25, abs=0.03)
    assert by[4].v2v_s == pytest.approx(1.0, abs=0.03)
    assert by[6].v2v_s is None  # a backchannel expects no answer of its own
    assert by[6].stop_s == pytest.approx(0.4, abs=0.03)
    assert by[6].resumed_after_s == pytest.approx(1.0, abs=0.03)


def _run() -> ConfigRun:
    call = analyse_recording(1, _agent_audio(65, HEARD), RATE, SCHEDULE)
    run = ConfigRun(label="A:agent", config="config/agent.yaml", calls=[call], wall_s=70.0)
    run.agent_turns = [
        TurnMetrics(turn=1, end_of_utterance_delay=0.5, stt_delay=0.45, llm_ttft=0.2, e2e=0.9),
        TurnMetrics(turn=2, end_of_utterance_delay=0.7, stt_delay=0.5, llm_ttft=0.3, e2e=1.1),
    ]
    return run


def test_summary_counts_what_the_targets_are_judged_on() -> None:
    s = summarize(_run())
    assert (s["turns"], s["answered"], s["unanswered"]) == (6, 5, 0)
    assert (s["cut_ins"], s["paused_turns"]) == (1, 1)
    assert s["overlaps_measured"] == 2
    assert (s["backchannels_resumed"], s["backchannels_over_agent"]) == (1, 1)
    assert s["v2v_ms"]["p50"] == pytest.approx(1000, abs=30)
    assert s["agent_stages_ms"]["llm_ttft"] == {"p50": 200.0, "p95": 300.0}


def test_percentile_is_nearest_rank() -> None:
    values = [float(v) for v in range(1, 21)]
    assert percentile(values, 50) == 10.0 and percentile(values, 95) == 19.0
    assert percentile([], 50) is None


def test_json_png_and_table(tmp_path: Path) -> None:
    runs = [_run()]
    data = json.loads(write_json(runs, tmp_path / "lt.json").read_text())
    assert data["summary"][0]["label"] == "A:agent"
    assert len(data["runs"][0]["calls"][0]["turns"]) == 6
    png = write_plot(runs, tmp_path / "lt.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    table = format_table(runs)
    assert "cut-ins into a mid-sentence pause: 1/1" in table


def test_variant_config_overrides_dotted_keys(tmp_path: Path) -> None:
    from worker.bench.loadtest_cli import variant_config
    from worker.config.agent import load_agent_config
    from worker.config.loader import ConfigError
    from worker.stack.render import project_root

    base = project_root() / "config" / "agent.yaml"
    out = variant_config(
        base, "turn.detector=transcript, turn.vad_min_silence_s=0.2", tmp_path / "v.yaml"
    )
    cfg = load_agent_config(out)
    assert cfg.turn.detector == "transcript" and cfg.turn.vad_min_silence_s == 0.2
    assert cfg.persona == load_agent_config(base).persona  # the rest is the base config
    with pytest.raises(ConfigError, match="key=value"):
        variant_config(base, "turn.detector", tmp_path / "bad.yaml")


async def test_server_means_read_the_inference_histograms() -> None:
    from aiohttp import web

    from worker.bench.loadtest import server_means

    body = "\n".join(
        [
            "# TYPE voicestack_inference_stage_latency_seconds histogram",
            'voicestack_inference_stage_latency_seconds_sum{stage="stt_final"} 1.5',
            'voicestack_inference_stage_latency_seconds_count{stage="stt_final"} 10.0',
            "# TYPE voicestack_inference_queue_wait_seconds histogram",
            'voicestack_inference_queue_wait_seconds_sum{engine="llm"} 0.2',
            'voicestack_inference_queue_wait_seconds_count{engine="llm"} 4.0',
            "",
        ]
    )

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(text=body)

    app = web.Application()
    app.router.add_get("/metrics", metrics)
    async with serve_app(app) as url:
        means = await server_means(url)
    assert means == {"stt_final": 0.15, "queue_llm": 0.05}
    assert await server_means("http://127.0.0.1:9") == {}
