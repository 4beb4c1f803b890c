"""Clause splitting for streamed TTS text."""

from worker.inference.clauses import split_clauses


def test_sentence_ends_split_only_when_followed_by_space() -> None:
    assert split_clauses("Hello there. How are") == (["Hello there."], "How are")
    # A trailing period may be a decimal point still streaming in.
    assert split_clauses("It costs 3.") == ([], "It costs 3.")
    assert split_clauses("It costs 3.5 dollars. Ok") == (["It costs 3.5 dollars."], "Ok")


def test_questions_exclamations_and_quotes() -> None:
    assert split_clauses('Really?! He said "stop." Then ') == (
        ["Really?!", 'He said "stop."'],
        "Then ",
    )


def test_short_comma_clauses_are_kept_together_long_ones_split() -> None:
    assert split_clauses("Yes, sure. ") == (["Yes, sure."], "")
    text = "Thanks for calling the support line, how can I help"
    assert split_clauses(text) == (["Thanks for calling the support line,"], "how can I help")


def test_abbreviations_do_not_end_a_clause() -> None:
    assert split_clauses("Ask Dr. Smith today. ") == (["Ask Dr. Smith today."], "")


def test_final_returns_the_remainder_as_a_clause() -> None:
    assert split_clauses("no punctuation here", final=True) == (["no punctuation here"], "")
    assert split_clauses("   ", final=True) == ([], "")
    assert split_clauses("One. two", final=True) == (["One.", "two"], "")


def test_newline_is_a_boundary() -> None:
    assert split_clauses("first line\nsecond") == (["first line"], "second")


def test_first_chunk_ends_at_the_first_comma_however_short() -> None:
    from worker.inference.clauses import first_chunk

    assert first_chunk("Sure, you can reset it", 6) == ("Sure,", "you can reset it")


def test_first_chunk_after_max_words_without_punctuation() -> None:
    from worker.inference.clauses import first_chunk

    text = "You can reset your password on our website"
    assert first_chunk(text, 6) == ("You can reset your password on", "our website")
    # The 6th word is only complete once whitespace follows it.
    assert first_chunk("You can reset your password", 5) is None
    assert first_chunk("You can reset your password ", 5) == ("You can reset your password", "")


def test_first_chunk_sentence_end_and_abbreviations() -> None:
    from worker.inference.clauses import first_chunk

    assert first_chunk("Yes. We ship", 6) == ("Yes.", "We ship")
    assert first_chunk("Dr. Smith is in today and", 3) == ("Dr. Smith is", "in today and")
    assert first_chunk("", 6) is None
