"""Validation of stream frames: every malformed frame maps to a protocol error code."""

import json

import pytest

from worker.inference.protocol import (
    ErrorCode,
    LlmStart,
    StreamError,
    SttStart,
    parse_control,
    parse_start,
)


def _code(text: str) -> ErrorCode:
    with pytest.raises(StreamError) as info:
        parse_start(text)
    return info.value.code


def test_valid_starts() -> None:
    stt = parse_start('{"op": "stt", "call_id": "c1"}')
    assert isinstance(stt, SttStart) and stt.interim and stt.sample_rate == 16000
    llm = parse_start(
        json.dumps(
            {
                "op": "llm",
                "call_id": "c",
                "messages": [{"role": "user", "content": "hi"}],
                "max_tokens": 5,
                "stop": ["\n"],
            }
        )
    )
    assert isinstance(llm, LlmStart) and llm.max_tokens == 5 and llm.stop == ["\n"]


@pytest.mark.parametrize(
    ("text", "code"),
    [
        ("{not json", ErrorCode.BAD_REQUEST),
        ("[1, 2]", ErrorCode.BAD_REQUEST),
        ('{"call_id": "c"}', ErrorCode.BAD_REQUEST),
        ('{"op": "translate", "call_id": "c"}', ErrorCode.UNKNOWN_OP),
        ('{"op": 3, "call_id": "c"}', ErrorCode.UNKNOWN_OP),
        ('{"op": "stt", "call_id": "c", "sample_rate": 8000}', ErrorCode.BAD_REQUEST),
        ('{"op": "stt", "call_id": ""}', ErrorCode.BAD_REQUEST),
        ('{"op": "stt", "call_id": "c", "typo": 1}', ErrorCode.BAD_REQUEST),
        ('{"op": "llm", "call_id": "c", "messages": []}', ErrorCode.BAD_REQUEST),
        (
            '{"op": "llm", "call_id": "c", "messages": [{"role": "robot", "content": "x"}]}',
            ErrorCode.BAD_REQUEST,
        ),
        ('{"op": "tts", "call_id": "c", "speed": 0}', ErrorCode.BAD_REQUEST),
    ],
)
def test_bad_starts(text: str, code: ErrorCode) -> None:
    assert _code(text) == code


def test_control_frames() -> None:
    allowed = frozenset({"push_text", "flush"})
    assert parse_control('{"type": "push_text", "text": "hi"}', allowed)["text"] == "hi"
    for bad in (
        '{"type": "cancel"}',
        '{"type": "push_text"}',
        '{"type": "flush", "x": 1}',
        '{"type": "push_text", "text": 5}',
        "nope",
    ):
        with pytest.raises(StreamError) as info:
            parse_control(bad, allowed)
        assert info.value.code == ErrorCode.BAD_REQUEST


@pytest.mark.parametrize(
    ("frame", "why"),
    [
        ("[" * 60_000 + "]" * 60_000, "nested too deeply"),
        ('{"type": "push_text", "text": "a\\u0000b"}', "NUL"),
        ('{"type": "push_text", "text": "a\\ud800b"}', "lone surrogate"),
    ],
)
def test_hostile_control_frames_are_bad_requests(frame: str, why: str) -> None:
    with pytest.raises(StreamError) as err:
        parse_control(frame, frozenset({"push_text"}))
    assert err.value.code == ErrorCode.BAD_REQUEST and why in str(err.value)


def test_hostile_text_in_a_start_frame_is_a_bad_request() -> None:
    start = {
        "op": "llm",
        "call_id": "c",
        "messages": [{"role": "user", "content": "hi \udfff"}],
    }
    with pytest.raises(StreamError) as err:
        parse_start(json.dumps(start))
    assert err.value.code == ErrorCode.BAD_REQUEST
    assert "messages[0].content" in str(err.value)
