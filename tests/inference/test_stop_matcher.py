"""Stop strings across streamed pieces: nothing past a stop string is emitted, nothing held
back longer than needed."""

from worker.inference.engines.llm import StopMatcher


def _run(pieces: list[str], stops: list[str]) -> tuple[str, bool]:
    matcher = StopMatcher(stops)
    out = ""
    for piece in pieces:
        text, stopped = matcher.feed(piece)
        out += text
        if stopped:
            return out, True
    return out + matcher.flush(), False


def test_stop_inside_one_piece() -> None:
    assert _run(["Hello. User: hi"], ["User:"]) == ("Hello. ", True)


def test_stop_split_across_pieces_is_never_emitted() -> None:
    matcher = StopMatcher(["User:"])
    assert matcher.feed("Hello Us") == ("Hello ", False)  # "Us" may begin the stop string
    assert matcher.feed("er: more") == ("", True)


def test_a_false_start_is_released() -> None:
    matcher = StopMatcher(["User:"])
    assert matcher.feed("Us") == ("", False)
    assert matcher.feed("ually fine") == ("Usually fine", False)


def test_without_a_stop_everything_comes_out() -> None:
    assert _run(["a", "b", "U"], ["User:"]) == ("abU", False)
    assert _run(["plain text"], []) == ("plain text", False)


def test_earliest_of_several_stops_wins() -> None:
    assert _run(["one\n\ntwo END"], ["END", "\n\n"]) == ("one", True)
