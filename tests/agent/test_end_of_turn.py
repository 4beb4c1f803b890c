"""The transcript end-of-turn detector: unfinished sentences wait, finished ones do not."""

from __future__ import annotations

import pytest
from livekit.agents.llm import ChatContext

from worker.agent.end_of_turn import TranscriptEndOfTurn, sentence_unfinished


@pytest.mark.parametrize(
    "text",
    [
        "I would like to know the price of",
        "Can you check the status of my",
        "My parcel arrived and",
        "I was wondering, um",
        "So I tried to log in,",
        "I wanted to ask...",
        "I would like to know the price on.",  # Whisper tiny's hearing of "the price of"
    ],
)
def test_unfinished(text: str) -> None:
    assert sentence_unfinished(text)


@pytest.mark.parametrize(
    "text",
    [
        "What are your opening hours?",
        "What can you help me with?",
        "How do I log in?",
        "Yes, I do.",
        "Thank you",
        "",
    ],
)
def test_finished(text: str) -> None:
    assert not sentence_unfinished(text)


async def test_detector_reads_the_newest_user_message() -> None:
    det = TranscriptEndOfTurn()
    ctx = ChatContext.empty()
    ctx.add_message(role="user", content="Hello.")
    ctx.add_message(role="assistant", content="Hi, how can I help?")
    ctx.add_message(role="user", content="I need to change my")
    threshold = await det.unlikely_threshold("en")
    assert threshold is not None
    assert await det.predict_end_of_turn(ctx) < threshold
    ctx.add_message(role="user", content="address, please.")
    assert await det.predict_end_of_turn(ctx) > threshold
    assert await det.supports_language("en") and not await det.supports_language("de")
