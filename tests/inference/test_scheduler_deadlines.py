"""Turn-relative deadlines, the per-call clock, and the scheduling config."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.loader import ConfigError, load_model, parse_model
from worker.inference.scheduler import (
    CallClock,
    DeadlineConfig,
    Engine,
    SchedulerFullError,
    SchedulingConfig,
    Stage,
)


def test_critical_deadlines_add_up_along_the_turn() -> None:
    d = DeadlineConfig()
    turn_end = 10.0
    assert d.deadline(Stage.STT_FINAL, 10.3, turn_end) == pytest.approx(10.040)
    assert d.deadline(Stage.LLM_FIRST_CLAUSE, 10.3, turn_end) == pytest.approx(10.190)
    assert d.deadline(Stage.TTS_FIRST, 10.3, turn_end) == pytest.approx(10.250)


def test_critical_work_without_a_turn_gets_its_own_budget() -> None:
    d = DeadlineConfig(llm_first_clause_ms=200)
    assert d.deadline(Stage.LLM_FIRST_CLAUSE, 5.0) == pytest.approx(5.2)
    assert d.deadline(Stage.TTS_FIRST, 5.0) == pytest.approx(5.06)


def test_slack_work_is_due_when_the_audio_already_sent_runs_out() -> None:
    d = DeadlineConfig()
    assert d.deadline(Stage.TTS_REST, 3.0, turn_end=1.0, playout_s=2.5) == pytest.approx(5.5)
    assert d.deadline(Stage.LLM_REST, 3.0, playout_s=-1.0) == pytest.approx(3.0)
    assert d.deadline(Stage.LLM_REST, 3.0) == pytest.approx(4.0)  # default slack
    assert d.deadline(Stage.STT_INTERIM, 3.0, turn_end=2.9) == pytest.approx(3.5)
    assert d.playout_of_text_s(30) == pytest.approx(2.0)
    with pytest.raises(ValueError, match="slack work"):
        d.turn_offset_s(Stage.TTS_REST)


def test_call_clock_tracks_turns_and_playout() -> None:
    clock = CallClock(DeadlineConfig(), max_calls=2)
    clock.end_of_turn("a", 1.0)
    assert clock.deadline("a", Stage.LLM_FIRST_CLAUSE, 1.1) == pytest.approx(1.19)
    clock.audio_sent("a", 1.3, 0.8)
    clock.audio_sent("a", 1.4, 1.0)  # queued behind the first clause
    assert clock.playout_left_s("a", 1.5) == pytest.approx(1.6)
    assert clock.deadline("a", Stage.TTS_REST, 1.5) == pytest.approx(3.1)
    assert clock.playout_left_s("a", 9.0) == 0.0
    clock.end_of_turn("a", 4.0)  # barge-in: old audio no longer counts
    assert clock.playout_left_s("a", 4.0) == 0.0
    assert clock.deadline("b", Stage.STT_FINAL, 2.0) == pytest.approx(2.04)  # unknown call
    clock.end_of_turn("b", 2.0)
    with pytest.raises(SchedulerFullError, match="refusing call c"):
        clock.end_of_turn("c", 2.0)
    clock.forget("a")
    clock.end_of_turn("c", 2.0)
    assert len(clock) == 2
    with pytest.raises(ValueError):
        clock.audio_sent("c", 2.0, -1.0)


def test_later_clauses_are_due_after_the_earlier_ones_can_have_played() -> None:
    clock = CallClock(DeadlineConfig(), max_calls=4)
    clock.end_of_turn("a", 1.0)
    # No audio sent yet: clause 2 (after 30 chars = 2 s of speech) is due 2 s after first audio.
    assert clock.clause_deadline("a", 1.1, chars_before=30) == pytest.approx(3.25)
    clock.audio_sent("a", 1.2, 4.0)  # more audio out than estimated: the real playout wins
    assert clock.clause_deadline("a", 1.3, chars_before=30) == pytest.approx(5.2)
    assert clock.clause_deadline("b", 1.3, chars_before=30) == pytest.approx(1.3)  # unknown call


def test_scheduling_config_loads_from_yaml(tmp_path: Path) -> None:
    path = tmp_path / "scheduling.yaml"
    path.write_text(
        "mode: serial\n"
        "deadlines: {stt_final_ms: 30}\n"
        "llm: {max_batch: 16, max_active: 32, cost_model: {min_gain: 0.2}}\n"
    )
    cfg = load_model(path, SchedulingConfig)
    assert cfg.mode == "serial"
    assert cfg.deadlines.stt_final_ms == 30 and cfg.deadlines.tts_first_ms == 60
    assert cfg.for_engine(Engine.LLM).slots == 32
    assert cfg.for_engine(Engine.LLM).cost_model.min_gain == 0.2
    assert cfg.for_engine(Engine.STT).slots == 8


@pytest.mark.parametrize(
    ("data", "where"),
    [
        ({"mode": "fastest"}, "mode"),
        ({"deadlines": {"stt_final": 40}}, "deadlines.stt_final"),
        ({"deadlines": {"tts_first_ms": -5}}, "deadlines.tts_first_ms"),
        ({"tts": {"max_batch": 0}}, "tts.max_batch"),
        ({"admission": {"max_load": 1.5}}, "admission.max_load"),
        ({"llm": {"cost_model": {"forgetting": 0}}}, "llm.cost_model.forgetting"),
    ],
)
def test_bad_scheduling_config_names_the_key(data: dict[str, object], where: str) -> None:
    with pytest.raises(ConfigError, match=f"scheduling.yaml: invalid configuration:\n  - {where}"):
        parse_model(data, SchedulingConfig, "scheduling.yaml")
