"""Recording analysis on synthetic recordings with known answer onsets, and the caller script."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from worker.caller.analysis import analyse_call, format_report, speech_segments
from worker.caller.audio import read_wav, resample
from worker.caller.utterances import ScheduledUtterance, build_caller_script

RATE = 8000


def _recording(bursts: list[tuple[float, float]], total_s: float) -> np.ndarray:
    """Silence (with faint noise) and 300 Hz 'speech' bursts at the given times."""
    rng = np.random.default_rng(0)
    out = rng.normal(0, 30, int(total_s * RATE))
    for start, end in bursts:
        t = np.arange(int(start * RATE), int(end * RATE))
        # Syllable-like amplitude modulation, with short dips inside one utterance.
        out[t] += (
            8000
            * np.sin(2 * np.pi * 300 * t / RATE)
            * (0.6 + 0.4 * np.sin(2 * np.pi * 4 * t / RATE))
        )
    return np.clip(out, -32768, 32767).astype(np.int16)


SCHEDULE = (
    ScheduledUtterance("first question", 5.0, 6.5),
    ScheduledUtterance("second question", 12.0, 13.0),
)


def test_greeting_answers_and_latencies_are_found() -> None:
    rec = _recording([(0.5, 3.0), (7.3, 9.0), (9.2, 10.0), (14.1, 15.0)], 18.0)
    analysis = analyse_call(rec, RATE, SCHEDULE)
    assert analysis.greeting is not None
    assert analysis.greeting.start_s == pytest.approx(0.5, abs=0.03)
    first, second = analysis.turns
    assert first.latency_s == pytest.approx(0.8, abs=0.03)
    assert first.answer is not None and first.answer.end_s == pytest.approx(10.0, abs=0.03)
    assert second.latency_s == pytest.approx(1.1, abs=0.03)


def test_missing_greeting_and_unanswered_turn_are_failures() -> None:
    rec = _recording([(7.3, 9.0)], 18.0)
    analysis = analyse_call(rec, RATE, SCHEDULE)
    analysis.turns[0].agent_text = "We open at nine."
    problems = analysis.failures()
    assert any("did not greet" in p for p in problems)
    assert any("utterance 2 got no spoken answer" in p for p in problems)
    assert not any("utterance 1" in p for p in problems)


def test_speech_running_over_the_utterance_end_is_not_its_answer() -> None:
    # The agent talks over the whole second question: no new onset after it ends.
    rec = _recording([(0.5, 3.0), (7.0, 13.5)], 18.0)
    analysis = analyse_call(rec, RATE, SCHEDULE)
    assert analysis.turns[1].answer is None


def test_report_has_table_and_percentiles() -> None:
    rec = _recording([(0.5, 3.0), (7.3, 9.0), (14.1, 15.0)], 18.0)
    analysis = analyse_call(rec, RATE, SCHEDULE)
    analysis.greeting_text = "Hello, thanks for calling."
    text = format_report(analysis, transport="webrtc")
    assert "caller: first question" in text and "Hello, thanks for calling." in text
    assert "800" in text and "1100" in text and "p50 950 ms, max 1100 ms" in text


def test_silence_has_no_segments() -> None:
    assert speech_segments(np.zeros(RATE * 3, dtype=np.int16), RATE) == []


def test_resample_keeps_duration() -> None:
    x = (1000 * np.sin(np.arange(22050) / 10)).astype(np.int16)
    assert len(resample(x, 22050, 8000)) == 8000


def test_caller_script_places_utterances_on_the_timeline(tmp_path: Path) -> None:
    script = build_caller_script(
        tmp_path,
        questions=("Hello there.", "Goodbye."),
        sample_rate=8000,
        greeting_wait_s=2.0,
        answer_wait_s=3.0,
    )
    samples, rate = read_wav(script.wav)
    assert rate == 8000 and len(samples) / rate == pytest.approx(script.duration_s)
    found = speech_segments(samples, rate)
    assert len(found) == 2
    for seg, utt in zip(found, script.utterances, strict=True):
        assert seg.start_s == pytest.approx(utt.start_s, abs=0.05)
        # The energy VAD ends a little early on quiet word endings; the schedule is exact.
        assert seg.end_s == pytest.approx(utt.end_s, abs=0.12)
    assert script.utterances[0].start_s == 2.0


def test_demo_agent_breakdown_adds_the_media_legs(tmp_path: Path) -> None:
    from worker.caller.demo import agent_breakdown

    log = tmp_path / "agent.log"
    log.write_text(
        "x INFO voicestack.agent.metrics: call r turn 0: eou=- stt=- llm_ttft=- "
        "tts_ttfb=90ms e2e=-\n"
        "x INFO voicestack.agent.metrics: call r turn 1: eou=300ms stt=290ms llm_ttft=150ms "
        "tts_ttfb=120ms e2e=800ms\n"
    )
    text = agent_breakdown(log, [1.2])
    assert text.splitlines()[-1].split() == ["1", "300", "290", "150", "120", "800", "400"]
    assert "-" == agent_breakdown(log, [1.2, 1.5]).splitlines()[-1].split()[-1]  # not aligned
    assert "missing" in agent_breakdown(tmp_path / "none.log")
