"""The overlap filter: backchannels and noise said over the agent never cost the answer;
words, even one, interrupt; a backchannel into silence is a turn."""

from __future__ import annotations

import pytest

from worker.agent.backchannel import OverlapFilter, words_of
from worker.agent.session import turn_handling
from worker.config.agent import AgentConfig, TurnConfig

BACKCHANNELS = TurnConfig().backchannels


@pytest.mark.parametrize(
    "text", ["Mm-hmm.", "mm hmm", "Okay.", "Okay, okay.", "Yeah, right.", "Uh-huh!", "All right."]
)
def test_backchannel_over_the_agent_is_dropped(text: str) -> None:
    f = OverlapFilter(BACKCHANNELS)
    f.user_started_speaking(agent_speaking=True)
    assert f.final_text(text) == ""


@pytest.mark.parametrize("text", ["Stop.", "Wait.", "Okay, but what about Sunday?", "No."])
def test_words_over_the_agent_interrupt(text: str) -> None:
    f = OverlapFilter(BACKCHANNELS)
    f.user_started_speaking(agent_speaking=True)
    assert f.final_text(text) == text


def test_backchannel_into_silence_is_a_turn() -> None:
    f = OverlapFilter(BACKCHANNELS)
    f.user_started_speaking(agent_speaking=False)
    assert f.final_text("Okay.") == "Okay."


@pytest.mark.parametrize("text", ["(coughing)", "[BLANK_AUDIO]", " . ", "*cough*", ""])
def test_no_words_is_never_a_turn(text: str) -> None:
    f = OverlapFilter(BACKCHANNELS)
    f.user_started_speaking(agent_speaking=False)
    assert f.final_text(text) == ""


def test_each_start_of_speech_resets_the_overlap() -> None:
    f = OverlapFilter(BACKCHANNELS)
    f.user_started_speaking(agent_speaking=True)
    f.user_started_speaking(agent_speaking=False)
    assert f.final_text("Yeah.") == "Yeah."


def test_words_of_strips_annotations_and_joins_hyphens() -> None:
    assert words_of("(laughs) Mm-hmm, OK!") == "mmhmm ok"


def _cfg(**turn: object) -> AgentConfig:
    base = AgentConfig.model_validate(
        {"persona": {"system_prompt": "x", "greeting": "hi"}, "turn": turn}
    )
    return base


def test_turn_handling_maps_the_config() -> None:
    opts = turn_handling(
        _cfg(
            detector="vad",
            min_interruption_s=0.2,
            false_interruption_timeout_s=0.8,
            preemptive_generation=False,
            preemptive_tts=True,
        )
    )
    assert opts["turn_detection"] == "vad"
    assert opts["interruption"]["min_duration"] == 0.2
    assert opts["interruption"]["false_interruption_timeout"] == 0.8
    assert opts["interruption"]["mode"] == "vad"
    assert opts["preemptive_generation"] == {"enabled": False, "preemptive_tts": True}


def test_local_eot_detector_runs_in_process() -> None:
    from livekit.agents.inference import TurnDetector

    detector = turn_handling(_cfg(detector="local_eot"))["turn_detection"]
    assert isinstance(detector, TurnDetector)
    assert detector.model == "turn-detector-v1-mini"  # the local model, never the cloud one


def test_transcript_detector_is_ours() -> None:
    from worker.agent.end_of_turn import TranscriptEndOfTurn

    assert isinstance(
        turn_handling(_cfg(detector="transcript"))["turn_detection"], TranscriptEndOfTurn
    )
