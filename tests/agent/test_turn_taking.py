"""Turn-taking analysis at the caller on synthetic recordings: cut-ins into a mid-sentence pause,
the barge-in stop time and a backchannel's resume, measured from the agent's audio."""

from __future__ import annotations

import numpy as np
import pytest
from synthetic_audio import tone_spans

from worker.caller.turn_taking import analyse_overlaps
from worker.caller.utterances import ScheduledUtterance

RATE = 8000


def _recording(total_s: float, speech: list[tuple[float, float]]) -> np.ndarray:
    return tone_spans(total_s, speech, rate=RATE)


PAUSED = ScheduledUtterance(
    "I would like to ask about my last invoice", 10.0, 13.0, kind="paused", pauses=((11.0, 11.6),)
)


def test_agent_answering_into_the_pause_is_a_cut_in() -> None:
    rec = _recording(20, [(11.4, 12.5), (13.8, 16.0)])
    [result] = analyse_overlaps(rec, RATE, [PAUSED])
    assert result.cut_in is True


def test_agent_waiting_for_the_whole_sentence_is_no_cut_in() -> None:
    rec = _recording(20, [(2.0, 9.0), (13.8, 16.0)])  # greeting before, answer after
    [result] = analyse_overlaps(rec, RATE, [PAUSED])
    assert result.cut_in is False


def test_barge_in_stop_time_is_onset_to_agent_quiet() -> None:
    barge = ScheduledUtterance("Sorry, what about Sunday?", 20.0, 21.5, kind="barge_in")
    rec = _recording(30, [(16.0, 20.42), (23.0, 25.0)])
    [result] = analyse_overlaps(rec, RATE, [barge])
    assert result.agent_talking_at_onset is True
    assert result.stop_s == pytest.approx(0.42, abs=0.03)


def test_barge_in_when_the_agent_was_silent_has_no_stop_time() -> None:
    barge = ScheduledUtterance("Sorry, what about Sunday?", 20.0, 21.5, kind="barge_in")
    rec = _recording(30, [(16.0, 19.0), (23.0, 25.0)])
    [result] = analyse_overlaps(rec, RATE, [barge])
    assert result.agent_talking_at_onset is False
    assert result.stop_s is None


def test_agent_that_never_stops_has_no_stop_time() -> None:
    barge = ScheduledUtterance("Stop please", 20.0, 21.0, kind="barge_in")
    rec = _recording(30, [(16.0, 30.0)])
    [result] = analyse_overlaps(rec, RATE, [barge])
    assert result.agent_talking_at_onset is True and result.stop_s is None


def test_backchannel_pause_and_resume() -> None:
    mhm = ScheduledUtterance("mm-hmm", 20.0, 20.5, kind="backchannel")
    rec = _recording(30, [(16.0, 20.3), (21.5, 25.0)])
    [result] = analyse_overlaps(rec, RATE, [mhm])
    assert result.stop_s == pytest.approx(0.3, abs=0.03)
    assert result.resumed_after_s == pytest.approx(1.0, abs=0.03)


def test_questions_are_not_overlap_turns() -> None:
    q = ScheduledUtterance("What are your opening hours?", 10.0, 12.0)
    assert analyse_overlaps(_recording(20, [(13.0, 15.0)]), RATE, [q]) == []
