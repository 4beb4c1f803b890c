"""The agent config: the shipped file loads; typos and bad values are errors naming the key."""

from __future__ import annotations

import logging
from pathlib import Path

import pytest

from worker.agent.turn_metrics import TurnMetricsLog, parse_turn_lines
from worker.config.agent import load_agent_config
from worker.config.loader import ConfigError

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_config_loads() -> None:
    cfg = load_agent_config(ROOT / "config" / "agent.yaml")
    assert cfg.persona.greeting.strip()
    assert cfg.worker.agent_name == "voicestack-agent"
    assert cfg.turn.min_endpointing_delay_s <= cfg.turn.max_endpointing_delay_s


@pytest.mark.parametrize(
    ("text", "where"),
    [
        ("persona: {system_prompt: x, greeting: hi, greting: typo}\n", "persona.greting"),
        ("persona: {system_prompt: x}\n", "persona.greeting"),
        (
            "persona: {system_prompt: x, greeting: hi}\ninference: {url: 'ws://x'}\n",
            "inference.url",
        ),
        (
            "persona: {system_prompt: x, greeting: hi}\n"
            "turn: {min_endpointing_delay_s: 5, max_endpointing_delay_s: 1}\n",
            "turn",
        ),
    ],
)
def test_bad_config_names_the_key(tmp_path: Path, text: str, where: str) -> None:
    path = tmp_path / "agent.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_agent_config(path)
    assert where in str(err.value) and str(path) in str(err.value)


def test_missing_config_file_is_clear(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_agent_config(tmp_path / "nope.yaml")


def test_turn_metrics_pair_user_turns_with_replies() -> None:
    log = TurnMetricsLog("c1")
    greeting = log.on_message("assistant", "Hello!", {"tts_node_ttfb": 0.1})
    assert greeting is not None and greeting.turn == 0
    assert (
        log.on_message("user", "Hi", {"end_of_turn_delay": 0.4, "transcription_delay": 0.05})
        is None
    )
    reply = log.on_message("assistant", "Sure.", {"llm_node_ttft": 0.2, "tts_node_ttfb": 0.08})
    assert reply is not None and reply.turn == 1
    assert (reply.user_text, reply.end_of_utterance_delay, reply.llm_ttft) == ("Hi", 0.4, 0.2)
    assert "eou=400ms" in reply.log_line() and "llm_ttft=200ms" in reply.log_line()


def test_turn_metrics_log_lines_parse_back(caplog: pytest.LogCaptureFixture) -> None:
    log = TurnMetricsLog("room-7")
    log.on_message("user", "Hi", {"end_of_turn_delay": 0.4, "transcription_delay": 0.35})
    with caplog.at_level(logging.INFO, logger="voicestack.agent.metrics"):
        log.on_message("assistant", "Sure.", {"llm_node_ttft": 0.2, "e2e_latency": 0.9})
    [(call, turn)] = parse_turn_lines(caplog.text)
    assert call == "room-7" and turn.turn == 1
    assert (turn.end_of_utterance_delay, turn.stt_delay, turn.llm_ttft) == (0.4, 0.35, 0.2)
    assert turn.tts_ttfb is None and turn.e2e == 0.9


def test_turn_records_carry_no_words_unless_the_operator_asks(
    caplog: pytest.LogCaptureFixture,
) -> None:
    for enabled in (False, True):
        caplog.clear()
        log = TurnMetricsLog("r", log_transcripts=enabled)
        log.on_message("user", "my card number is 4111", {})
        with caplog.at_level(logging.INFO, logger="voicestack.agent.metrics"):
            log.on_message("assistant", "Thanks.", {})
        fields = caplog.records[-1].turn_metrics  # type: ignore[attr-defined]
        assert ("user_text" in fields) is enabled and ("agent_text" in fields) is enabled
        assert "4111" not in caplog.records[-1].getMessage()
