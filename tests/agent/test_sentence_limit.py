"""SentenceLimit: replies end after N sentences, on boundaries only a following space confirms."""

from __future__ import annotations

import pytest

from worker.agent.plugins.sentence_limit import SentenceLimit


def _feed(limit: SentenceLimit, pieces: list[str]) -> str:
    return "".join(limit.feed(p) for p in pieces)


def test_cuts_after_the_second_sentence() -> None:
    limit = SentenceLimit(2)
    out = _feed(limit, ["Yes", "! We", " ship on", " Saturdays", ".", " Sundays", " too."])
    assert out == "Yes! We ship on Saturdays." and limit.done


def test_decimal_points_and_closing_quotes() -> None:
    limit = SentenceLimit(1)
    pieces = ["It costs 3", ".", "5 dollars", '."', " Then"]
    assert _feed(limit, pieces) == 'It costs 3.5 dollars."'


def test_short_reply_passes_whole() -> None:
    limit = SentenceLimit(2)
    assert _feed(limit, ["Sure", ", one moment."]) == "Sure, one moment." and not limit.done


def test_nothing_after_done() -> None:
    limit = SentenceLimit(1)
    limit.feed("Hi. ")
    assert limit.done and limit.feed("More text.") == ""


def test_zero_is_refused() -> None:
    with pytest.raises(ValueError):
        SentenceLimit(0)
