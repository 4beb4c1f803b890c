"""The ``words`` option of the STT start frame and the wire form of word timings (no models)."""

from __future__ import annotations

import pytest

from worker.inference.jobs import SttWords
from worker.inference.protocol import ErrorCode, StreamError, SttStart, parse_start
from worker.inference.stt_stream import _text_and_words
from worker.inference.words import Word, words_from_wire, words_to_wire


def test_words_option_defaults_off_and_validates() -> None:
    plain = parse_start('{"op": "stt", "call_id": "c"}')
    assert isinstance(plain, SttStart) and plain.words is False
    on = parse_start('{"op": "stt", "call_id": "c", "words": true, "interim": false}')
    assert isinstance(on, SttStart) and on.words is True and on.interim is False
    for bad in ('"maybe"', "[1]", "{}", "null"):
        with pytest.raises(StreamError) as info:
            parse_start('{"op": "stt", "call_id": "c", "words": ' + bad + "}")
        assert info.value.code == ErrorCode.BAD_REQUEST
        assert "words" in info.value.message


def test_wire_round_trip() -> None:
    words = (Word("My", 0.0, 0.3204), Word("card,", 0.3204, 0.52))
    wire = words_to_wire(words)
    assert wire == [["My", 0.0, 0.32], ["card,", 0.32, 0.52]]
    assert words_from_wire(wire) == (Word("My", 0.0, 0.32), Word("card,", 0.32, 0.52))
    assert words_from_wire([]) == ()


@pytest.mark.parametrize(
    "bad",
    [None, "x", [["a", 0.0]], [[1, 0.0, 1.0]], [["a", 1.0, 0.5]], [["a", -1, 0]], [["a", True, 1]]],
)
def test_malformed_wire_words(bad: object) -> None:
    with pytest.raises(ValueError):
        words_from_wire(bad)


def test_stream_reads_both_result_kinds() -> None:
    assert _text_and_words("hi") == ("hi", ())
    assert _text_and_words(None) == ("", ())
    timed = (Word("hi", 0.1, 0.3),)
    assert _text_and_words(SttWords("hi", timed)) == ("hi", timed)
