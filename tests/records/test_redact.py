"""Redaction of personal data in transcripts, DTMF digits, recordings and caller IDs."""

from __future__ import annotations

import pytest

from worker.config.records import PII_KINDS
from worker.records.redact import Finding, Redacted, Redactor, mask_number

REDACTOR = Redactor()


def _found(text: str, redactor: Redactor = REDACTOR) -> list[tuple[str, str]]:
    """(kind, original substring) of every finding."""
    return [(f.kind, text[f.start : f.end]) for f in redactor.find(text)]


# --- each kind --------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "number",
    [
        "4111 1111 1111 1111",
        "4111-1111-1111-1111",
        "4111111111111111",
        "5500 0000 0000 0004",
        "3782 822463 10005",  # Amex: 15 digits in 4-6-5 groups
    ],
)
def test_card_numbers_in_written_forms(number: str) -> None:
    result = REDACTOR.redact(f"my card is {number}, expiry next year")
    assert result.text == "my card is [card], expiry next year"
    assert result.findings == (Finding("card", 11, 11 + len(number)),)


def test_card_needs_a_valid_luhn_checksum() -> None:
    text = "your order 4111111111111112 ships today"
    assert REDACTOR.redact(text).text == text


def test_card_read_out_as_digit_words() -> None:
    spoken = "four one one one, one one one one, one one one one, one one one one"
    text = f"it is {spoken} okay"
    assert _found(text) == [("card", spoken)]
    assert REDACTOR.redact(text).text == "it is [card] okay"


def test_card_dictated_as_single_digits() -> None:
    digits = " ".join("4111111111111111")
    assert _found(f"number {digits} thanks") == [("card", digits)]


@pytest.mark.parametrize(
    "phone",
    ["(415) 555-2671", "+44 20 7946 0958", "415-555-2671", "1-800-555-0199"],
)
def test_phone_numbers(phone: str) -> None:
    assert REDACTOR.redact(f"call me at {phone} tomorrow").text == "call me at [phone] tomorrow"


def test_phone_number_spoken_after_an_interjection() -> None:
    # "Oh" opens the sentence: it must not become a leading zero of the number.
    text = "Oh, four one five five five five two six seven one"
    assert _found(text) == [("phone", "four one five five five five two six seven one")]


def test_phone_region_decides_numbers_without_country_code() -> None:
    text = "my number is 020 7946 0958"
    assert _found(text) == []
    assert _found(text, Redactor(region="GB")) == [("phone", "020 7946 0958")]


@pytest.mark.parametrize(
    "account",
    [
        "DE89 3704 0044 0532 0130 00",
        "DE89370400440532013000",
        "GB82 WEST 1234 5698 7654 32",
        "gb82 west 1234 5698 7654 32",
    ],
)
def test_iban(account: str) -> None:
    # The uppercase word after the IBAN must not be swallowed by it.
    assert REDACTOR.redact(f"IBAN {account} OK thanks").text == "IBAN [iban] OK thanks"


def test_iban_with_a_wrong_checksum_stays() -> None:
    text = "IBAN GB82 WEST 1234 5698 7654 33"
    assert REDACTOR.redact(text).text == text


def test_us_ssn() -> None:
    assert _found("it is 536-90-4399.") == [("national_id", "536-90-4399")]
    assert _found("it is 536 90 4399") == [("national_id", "536 90 4399")]


def test_ssn_stdnum_rejects_stays() -> None:
    # stdnum blacklists this famous (Woolworth wallet) number, and 9xx areas are never issued.
    assert _found("SSN 078-05-1120 or 900-12-3456") == []


def test_bare_nine_digits_need_an_id_keyword() -> None:
    assert _found("order 536904399 is late") == []
    assert _found("my social is 536904399") == [("national_id", "536904399")]
    spoken = "five three six nine zero four three nine nine"
    assert _found(f"my SSN is {spoken}") == [("national_id", spoken)]


@pytest.mark.parametrize(
    ("text", "value"),
    [
        ("my NINO is JG 10 37 59 A", "JG 10 37 59 A"),
        ("national insurance JG103759A", "JG103759A"),
        ("DNI 12345678Z", "12345678Z"),
        ("NIE X1234567L", "X1234567L"),
        ("codice fiscale RSSMRA85T10A562S", "RSSMRA85T10A562S"),
        ("CPF 390.533.447-05", "390.533.447-05"),
        ("my CPF is 39053344705", "39053344705"),
        ("numero 2 95 10 99 126 111 93", "2 95 10 99 126 111 93"),
        ("my SIN is 123 456 782", "123 456 782"),
        ("Aadhaar 2345 6789 0124", "2345 6789 0124"),
    ],
)
def test_other_national_ids(text: str, value: str) -> None:
    assert _found(text) == [("national_id", value)]


@pytest.mark.parametrize(
    "text",
    [
        "QQ 12 34 56 C",  # HMRC's example prefix QQ is never allocated
        "DNI 12345678A",  # wrong check letter
        "codice RSSMRA85T10A562T",  # wrong check character
        "order 123 456 782",  # a valid SIN, but nothing says it is one
        "ref 2345 6789 0124",  # a valid Aadhaar, but nothing says it is one
    ],
)
def test_national_id_lookalikes_stay(text: str) -> None:
    assert _found(text) == []


@pytest.mark.parametrize(
    ("text", "address"),
    [
        ("mail john.smith@example.com now", "john.smith@example.com"),
        ("it's JANE+calls@Mail.Example.co.uk.", "JANE+calls@Mail.Example.co.uk"),
        ("it is john at example dot com thanks", "john at example dot com"),
        ("john dot smith at example dot co dot uk", "john dot smith at example dot co dot uk"),
        ("write to jane at example.org", "jane at example.org"),
    ],
)
def test_email(text: str, address: str) -> None:
    assert _found(text) == [("email", address)]


# --- what must stay ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "text",
    [
        "order 123456 shipped",
        "your order number is 98765432 and ref 12345",
        "the appointment is at 10:30 or 14:45",
        "it costs $1,299.99 or 45.50 euros",
        "back in 1999 and again in 2024",
        "between 2019 and 2024 we had 3 or 4 visits",
        "I have two cats and one dog",
        "double five",
        "meet me at noon, not at the office",
        "",
    ],
)
def test_ordinary_numbers_and_prose_stay(text: str) -> None:
    result = REDACTOR.redact(text)
    assert result == Redacted(text, ())


def test_disabled_kinds_leave_text_alone() -> None:
    text = "card 4111 1111 1111 1111, mail a@example.com, call (415) 555-2671"
    only_email = Redactor(["email"])
    expected = "card 4111 1111 1111 1111, mail [email], call (415) 555-2671"
    assert only_email.redact(text).text == expected
    assert Redactor([]).redact(text) == Redacted(text, ())


def test_kinds() -> None:
    assert REDACTOR.kinds == frozenset(PII_KINDS)
    assert Redactor(["card", "card", "phone"]).kinds == frozenset({"card", "phone"})


def test_unknown_kind_or_region_is_refused() -> None:
    with pytest.raises(ValueError, match="PII kinds"):
        Redactor(["card", "passport"])  # type: ignore[list-item]
    with pytest.raises(ValueError, match="region"):
        Redactor(region="XX")


# --- offsets and overlaps ---------------------------------------------------------------------


def test_offsets_point_into_the_original_text() -> None:
    text = "Hi, card four one one one 1111 1111 1111 and phone (415) 555-2671."
    findings = REDACTOR.find(text)
    assert findings == (
        Finding("card", 9, 40),
        Finding("phone", 51, 65),
    )
    assert text[9:40] == "four one one one 1111 1111 1111"
    assert text[51:65] == "(415) 555-2671"
    assert REDACTOR.redact(text).text == "Hi, card [card] and phone [phone]."


def test_overlapping_findings_resolve_to_the_longest() -> None:
    # Both "4111 1111 1111 1111" and the whole 18 digits pass Luhn: the longer one wins.
    assert _found("59 4111 1111 1111 1111") == [("card", "59 4111 1111 1111 1111")]
    # A card-like local part is one e-mail address, not a card inside one.
    assert _found("4111111111111111@example.com") == [("email", "4111111111111111@example.com")]


def test_several_findings_are_sorted() -> None:
    text = "a@example.com then 536-90-4399 then 4111111111111111"
    assert [f.kind for f in REDACTOR.find(text)] == ["email", "national_id", "card"]
    assert REDACTOR.redact(text).text == "[email] then [national_id] then [card]"


# --- recordings, DTMF, caller IDs -------------------------------------------------------------


def _words(text: str, start: float = 0.0, step: float = 0.5) -> list[tuple[str, float, float]]:
    """Word timings: each word lasts 0.4 s, a new one every ``step`` seconds."""
    return [(w, start + i * step, start + i * step + 0.4) for i, w in enumerate(text.split())]


def test_silence_spans_cover_spoken_card_digits_as_one_span() -> None:
    words = _words("my card is four one one one one one one one one one one one one one one one ok")
    # Words 3..18 are the digits: 1.5 s to 9.0 + 0.4 s, gaps between them included.
    assert REDACTOR.silence_spans(words) == ((1.5, 9.4),)


def test_silence_spans_keep_separate_findings_apart() -> None:
    words = _words("mail a@example.com or call (415) 555-2671 please")
    assert REDACTOR.silence_spans(words) == ((0.5, 0.9), (2.0, 2.9))


def test_silence_spans_merge_overlapping_times_and_strip_words() -> None:
    # Whisper words carry a leading space; a timing may overlap the previous word.
    words = [(" call", 0.0, 0.3), (" 415", 0.3, 0.8), (" 555", 0.7, 1.2), (" 2671", 1.2, 1.9)]
    assert REDACTOR.silence_spans(words) == ((0.3, 1.9),)


def test_silence_spans_without_pii() -> None:
    assert REDACTOR.silence_spans(_words("nothing to hide here")) == ()
    assert REDACTOR.silence_spans([]) == ()
    assert Redactor(["email"]).silence_spans(_words("card 4111 1111 1111 1111")) == ()


def test_redact_digits() -> None:
    assert REDACTOR.redact_digits("1234#") == "[dtmf]"
    assert REDACTOR.redact_digits("") == ""
    assert Redactor(["card"]).redact_digits("1234#") == "1234#"


@pytest.mark.parametrize(
    ("number", "keep", "masked"),
    [
        ("+15550100", 4, "+****0100"),
        ("15550100", 4, "****0100"),
        ("+1 (415) 555-2671", 4, "+* (***) ***-2671"),
        ("+15550100", 2, "+******00"),
        ("1234", 4, "****"),
        ("+123", 4, "+***"),
        ("5550100", 0, "*******"),
        ("", 4, ""),
        (None, 4, None),
    ],
)
def test_mask_number(number: str | None, keep: int, masked: str | None) -> None:
    assert mask_number(number, keep) == masked


def test_mask_number_default_keeps_four_and_refuses_negative() -> None:
    assert mask_number("+442079460958") == "+********0958"
    with pytest.raises(ValueError):
        mask_number("123", -1)


@pytest.mark.parametrize(
    "text, expected",
    [
        ("My email is john.smith.example.com", "My email is [email]"),
        ("my e-mail address is jo dot doe dot example dot org.", "my e-mail address is [email]."),
        ("the email was fine.", "the email was fine."),
        ("I emailed support.com yesterday", "I emailed support.com yesterday"),
    ],
)
def test_an_address_said_after_the_word_email_lost_its_at(text: str, expected: str) -> None:
    # Whisper often drops the "at": "my email is john.smith.example.com".
    assert Redactor().redact(text).text == expected
