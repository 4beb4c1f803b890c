"""Phrase rules for asking for a person and for saying goodbye (any model, no tool calls)."""

from __future__ import annotations

import pytest

from worker.agent.intents import asks_for_person, says_goodbye
from worker.config.flows import Flow, TransferConfig

PHRASES = TransferConfig(target="desk").phrases
GOODBYES = Flow(name="x", default=True).goodbye_phrases


@pytest.mark.parametrize(
    "text",
    [
        "Can I talk to a person?",
        "can i talk to a person",
        "I want to speak with a human, please.",
        "Please transfer me to an agent.",
        "Put me through to a representative.",
        "Agent.",
        "A real person, please!",
        "I\u2019d like to speak to a manager.",
        "Can I talk to the person, please?",
    ],
)
def test_asks_for_person(text: str) -> None:
    assert asks_for_person(text, PHRASES)


@pytest.mark.parametrize(
    "text",
    [
        "My parcel was delivered by a person I did not know and it was damaged.",
        "What are your opening hours?",
        "The agent on the phone yesterday said my refund was on its way already.",
        "",
    ],
)
def test_does_not_ask_for_person(text: str) -> None:
    assert not asks_for_person(text, PHRASES)


@pytest.mark.parametrize("text", ["Goodbye.", "Okay, that's all. Bye bye!", "Thanks, good bye"])
def test_says_goodbye(text: str) -> None:
    assert says_goodbye(text, GOODBYES)


@pytest.mark.parametrize(
    "text",
    [
        "How do I say goodbye to my old contract and move to the new plan you offer?",
        "Okay, thank you very much.",
        "",
    ],
)
def test_not_goodbye(text: str) -> None:
    assert not says_goodbye(text, GOODBYES)
