"""Find and redact personal data in call transcripts, DTMF digits and caller IDs.

Why these libraries: Presidio, the usual choice, needs a spaCy model that is not on PyPI and
is fetched from a model hub, so it cannot run offline from PyPI packages alone. libphonenumber
(``phonenumbers``) and ``python-stdnum`` are maintained, pure Python, work offline, and validate
numbers and checksums (Luhn, IBAN mod 97, national-ID check digits), which keeps order numbers,
prices and times out of the redactions. E-mail addresses need no library: a regex suffices.

Speech transcripts write numbers in many ways, so detection runs on a normalized copy of the
text where runs of spelled digits ("four one one one", "double five", "oh" after a digit) and of
single digits ("4 1 1 1") become contiguous digits; every finding's offsets still point into the
original text.

Kinds (``PiiKind`` of :mod:`worker.config.records`):

- ``card``: 13-19 digits, optionally in groups split by single spaces or hyphens, Luhn-valid.
- ``iban``: country code, check digits and BBAN, optionally grouped, checked by ``stdnum.iban``.
- ``phone``: ``phonenumbers.PhoneNumberMatcher`` at ``Leniency.VALID`` in the configured region.
- ``email``: ``name@example.com`` and the spoken ``name at example dot com``.
- ``national_id``: US SSN (``536-90-4399``), UK NINO (``JG 10 37 59 A``; python-stdnum has no
  NINO module, so HMRC's prefix rules are checked here), Spanish DNI (``12345678Z``) and NIE
  (``X1234567L``), Italian codice fiscale, Brazilian CPF (``390.533.447-05``) and French NIR
  (``2 95 10 99 126 111 93``) in their written formats. Formats that are bare digits and easily
  mistaken for other numbers (a 9-digit SSN, Canadian SIN, Indian Aadhaar, a bare CPF or NIR)
  count only after a keyword such as "social", "SIN", "Aadhaar" or "ID" shortly before them.
- ``dtmf``: digits keyed on the phone pad, see :meth:`Redactor.redact_digits`.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

import phonenumbers
from stdnum import iban, luhn
from stdnum.br import cpf
from stdnum.ca import sin
from stdnum.es import dni, nie
from stdnum.fr import nir
from stdnum.in_ import aadhaar
from stdnum.it import codicefiscale
from stdnum.us import ssn

from worker.config.records import PII_KINDS, PiiKind

__all__ = ["Finding", "Redacted", "Redactor", "mask_number"]


@dataclass(frozen=True)
class Finding:
    """One piece of personal data: its kind and character offsets in the original text."""

    kind: PiiKind
    start: int
    end: int


@dataclass(frozen=True)
class Redacted:
    """A redacted text (each finding replaced by ``[kind]``) and what was found."""

    text: str
    findings: tuple[Finding, ...]


# --- spelled digits ---------------------------------------------------------------------------

_WORD_DIGITS = {
    "zero": "0",
    "oh": "0",
    "one": "1",
    "two": "2",
    "three": "3",
    "four": "4",
    "five": "5",
    "six": "6",
    "seven": "7",
    "eight": "8",
    "nine": "9",
}
_DIGIT_TOKEN = re.compile(
    r"\b(?:(?P<rep>double|triple)[ -])?(?P<d>zero|oh|one|two|three|four|five|six|seven|eight|nine"
    r"|\d)\b",
    re.IGNORECASE,
)
# What may sit between two digits of one spoken number: Whisper puts commas, periods or hyphens
# at the pauses of a dictated number.
_DIGIT_GAP = re.compile(r"\s*[,.;-]?\s*")


@dataclass(frozen=True)
class _Normalized:
    """Text with spelled digits made digits, and the way back to the original offsets."""

    text: str
    starts: tuple[int, ...] | None  # original start of each char; None: text is the original
    ends: tuple[int, ...] | None

    def span(self, start: int, end: int) -> tuple[int, int]:
        if self.starts is None or self.ends is None:
            return start, end
        return self.starts[start], self.ends[end - 1]


def _normalize(text: str) -> _Normalized:
    runs: list[list[re.Match[str]]] = []
    prev_end = -1
    for m in _DIGIT_TOKEN.finditer(text):
        joined = bool(runs) and prev_end == runs[-1][-1].end()
        if joined and _DIGIT_GAP.fullmatch(text, prev_end, m.start()):
            runs[-1].append(m)
        elif m.group("d").lower() == "oh" and not m.group("rep"):
            # "Oh, four one five ..." is an interjection, not a leading zero.
            prev_end = -1
            continue
        else:
            runs.append([m])
        prev_end = m.end()
    pieces: list[tuple[int, int, str]] = []  # (start, end, replacement) in the original
    for run in runs:
        if len(run) < 2 and not run[0].group("rep"):
            continue
        for m in run:
            digit = _WORD_DIGITS.get(m.group("d").lower(), m.group("d"))
            times = {"double": 2, "triple": 3}.get((m.group("rep") or "").lower(), 1)
            pieces.append((m.start(), m.end(), digit * times))
    if not pieces:
        return _Normalized(text, None, None)
    out: list[str] = []
    starts: list[int] = []
    ends: list[int] = []
    pos = 0
    for index, (start, end, digits) in enumerate(pieces):
        out.append(text[pos:start])
        starts.extend(range(pos, start))
        ends.extend(range(pos + 1, start + 1))
        out.append(digits)
        starts.extend([start] * len(digits))
        ends.extend([end] * len(digits))
        pos = end
        next_start = pieces[index + 1][0] if index + 1 < len(pieces) else -1
        if next_start >= 0 and _DIGIT_GAP.fullmatch(text, pos, next_start):
            pos = next_start  # drop the gap: the spoken digits become one number
    out.append(text[pos:])
    starts.extend(range(pos, len(text)))
    ends.extend(range(pos + 1, len(text) + 1))
    return _Normalized("".join(out), tuple(starts), tuple(ends))


# --- cards and IBANs --------------------------------------------------------------------------

_DIGIT_GROUPS = re.compile(r"(?<!\w)\d+(?:[ -]\d+)*(?!\w)")
_IBAN_GROUPS = re.compile(r"(?<![A-Za-z0-9])[A-Za-z]{2}\d{2}[A-Za-z0-9]*(?:[ -][A-Za-z0-9]+)*")
_GROUP = re.compile(r"[A-Za-z0-9]+")


def _group_windows(match: re.Match[str], first_only: bool) -> Iterable[tuple[int, int, str]]:
    """Every run of whole groups in ``match``: (start, end, the groups' characters)."""
    groups = [(g.start(), g.end(), g.group()) for g in _GROUP.finditer(match.group())]
    base = match.start()
    for i in range(1 if first_only else len(groups)):
        chars = ""
        for j in range(i, len(groups)):
            chars += groups[j][2]
            if len(chars) > 34:  # longer than any card or IBAN
                break
            yield base + groups[i][0], base + groups[j][1], chars


def _cards(text: str) -> Iterable[tuple[int, int]]:
    for match in _DIGIT_GROUPS.finditer(text):
        for start, end, digits in _group_windows(match, first_only=False):
            if (
                13 <= len(digits) <= 19
                and digits[0] != "0"
                and len(set(digits)) > 1  # all-zero and the like pass Luhn
                and luhn.is_valid(digits)
            ):
                yield start, end


def _ibans(text: str) -> Iterable[tuple[int, int]]:
    # The greedy pattern may run into the words after the IBAN ("... 32 OK"): every prefix of
    # whole groups is tried and the checksum picks the right one.
    for match in _IBAN_GROUPS.finditer(text):
        for start, end, chars in _group_windows(match, first_only=True):
            if len(chars) >= 15 and iban.is_valid(chars.upper()):
                yield start, end


# --- national IDs -----------------------------------------------------------------------------

_LEFT = r"(?<!\w)(?<!\d[ .-])"  # not the tail of a longer number
_RIGHT = r"(?!\w)(?![ .-]\d)"  # nor its head
_ID_CONTEXT = re.compile(
    r"\b(?:ssn|social|sin|insurance|aadhaa?r|uid|cpf|nir|insee|id|identity|identification"
    r"|national)\b",
    re.IGNORECASE,
)
_CONTEXT_CHARS = 48
_NINO_BAD_PREFIXES = frozenset({"BG", "GB", "KN", "NK", "NT", "TN", "ZZ"})


def _nino_is_valid(number: str) -> bool:
    """HMRC's allocation rules for a National Insurance number (it has no check digit)."""
    prefix = number[:2]
    return (
        prefix[0] not in "DFIQUV"
        and prefix[1] not in "DFIOQUV"
        and prefix not in _NINO_BAD_PREFIXES
    )


@dataclass(frozen=True)
class _IdFormat:
    pattern: re.Pattern[str]
    is_valid: Callable[[str], bool]  # gets the ID without separators
    needs_context: bool


def _id(pattern: str, is_valid: Callable[[str], bool], needs_context: bool = False) -> _IdFormat:
    return _IdFormat(re.compile(_LEFT + pattern + _RIGHT), is_valid, needs_context)


_ID_FORMATS = (
    _id(r"\d{3}([ -])\d{2}\1\d{4}", ssn.is_valid),
    _id(r"\d{9}", ssn.is_valid, needs_context=True),
    _id(r"\d{3}([ -]?)\d{3}\1\d{3}", sin.is_valid, needs_context=True),
    _id(r"[A-Z]{2} ?\d{2} ?\d{2} ?\d{2} ?[A-D]", _nino_is_valid),
    _id(r"\d{8}-?[A-Z]", dni.is_valid),
    _id(r"[XYZ]-?\d{7}-?[A-Z]", nie.is_valid),
    _id(
        r"[A-Z]{6}[0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{2}[A-Z][0-9LMNP-V]{3}[A-Z]",
        codicefiscale.is_valid,
    ),
    _id(r"\d{3}\.\d{3}\.\d{3}-\d{2}", cpf.is_valid),
    _id(r"\d{11}", cpf.is_valid, needs_context=True),
    _id(r"[2-9]\d{3}([ -]?)\d{4}\1\d{4}", aadhaar.is_valid, needs_context=True),
    _id(r"[12] \d{2} \d{2} (?:\d{2}|2[AB]) \d{3} \d{3} \d{2}", nir.is_valid),
    _id(r"[12]\d{4}(?:\d{2}|2[AB])\d{8}", nir.is_valid, needs_context=True),
)
_SEPARATORS = str.maketrans("", "", " .-")


def _national_ids(text: str) -> Iterable[tuple[int, int]]:
    for fmt in _ID_FORMATS:
        for match in fmt.pattern.finditer(text):
            start = match.start()
            if fmt.needs_context and not _ID_CONTEXT.search(
                text, max(0, start - _CONTEXT_CHARS), start
            ):
                continue
            if fmt.is_valid(match.group().translate(_SEPARATORS)):
                yield start, match.end()


# --- e-mail -----------------------------------------------------------------------------------

_DOT = r"(?:\.|\s+dot\s+)"
_EMAIL = re.compile(
    r"(?<![\w.%+-])"
    rf"[A-Za-z0-9_%+-]+(?:{_DOT}[A-Za-z0-9_%+-]+)*"  # local part, "john dot smith" too
    r"(?:\s*@\s*|\s+at\s+)"
    rf"[A-Za-z0-9-]+(?:{_DOT}[A-Za-z0-9-]+)*{_DOT}[A-Za-z]{{2,24}}"
    r"(?![\w-])(?!\.\w)",
    re.IGNORECASE,
)
_EMAIL_HINT = re.compile(r"@|\sat\s|e-?mail", re.IGNORECASE)
# Speech recognisers drop the "at" as often as not: "my email is john.smith.example.com".
# Right after the word e-mail (address) (is), a dotted name is taken for the address.
_SAID_EMAIL = re.compile(
    r"\be-?mail(?:\s+address)?(?:\s+is|:)?\s+"
    rf"(?P<address>[A-Za-z0-9_%+-]+(?:{_DOT}[A-Za-z0-9_%+-]+)*{_DOT}[A-Za-z]{{2,24}})"
    r"(?![\w-])",
    re.IGNORECASE,
)


def _emails(text: str) -> Iterable[tuple[int, int]]:
    if not _EMAIL_HINT.search(text):
        return
    for match in _EMAIL.finditer(text):
        yield match.start(), match.end()
    for match in _SAID_EMAIL.finditer(text):
        yield match.start("address"), match.end("address")


# --- the redactor -----------------------------------------------------------------------------

# Ties between equally long findings go to the earlier kind here.
_ORDER: tuple[PiiKind, ...] = ("card", "iban", "national_id", "phone", "email", "dtmf")
_PRIORITY: dict[PiiKind, int] = {kind: rank for rank, kind in enumerate(_ORDER)}


class Redactor:
    """Finds the enabled kinds of personal data in text and replaces them with ``[kind]``.

    Stateless after construction and safe to share between calls and threads.
    """

    def __init__(self, kinds: Iterable[PiiKind] = PII_KINDS, *, region: str = "US") -> None:
        chosen = frozenset(kinds)
        unknown = chosen - set(PII_KINDS)
        if unknown:
            raise ValueError(f"unknown PII kinds: {sorted(unknown)}")
        if region not in phonenumbers.SUPPORTED_REGIONS:
            raise ValueError(f"unknown phone region: {region!r}")
        self._kinds: frozenset[PiiKind] = chosen
        self._region = region

    @property
    def kinds(self) -> frozenset[PiiKind]:
        """The kinds this redactor redacts."""
        return self._kinds

    def find(self, text: str) -> tuple[Finding, ...]:
        """Personal data in ``text``: sorted by offset, non-overlapping (the longest wins)."""
        norm = _normalize(text)
        spans: list[tuple[PiiKind, int, int]] = []
        has_digits = any(c.isdigit() for c in norm.text)
        if has_digits:
            if "card" in self._kinds:
                spans.extend(("card", s, e) for s, e in _cards(norm.text))
            if "iban" in self._kinds:
                spans.extend(("iban", s, e) for s, e in _ibans(norm.text))
            if "national_id" in self._kinds:
                spans.extend(("national_id", s, e) for s, e in _national_ids(norm.text))
            if "phone" in self._kinds:
                matcher = phonenumbers.PhoneNumberMatcher(
                    norm.text, self._region, leniency=phonenumbers.Leniency.VALID
                )
                spans.extend(("phone", m.start, m.end) for m in matcher)
        if "email" in self._kinds:
            spans.extend(("email", s, e) for s, e in _emails(norm.text))
        found = [Finding(kind, *norm.span(s, e)) for kind, s, e in spans]
        found.sort(key=lambda f: (f.start - f.end, _PRIORITY[f.kind], f.start))
        kept: list[Finding] = []
        for finding in found:
            if all(finding.end <= k.start or finding.start >= k.end for k in kept):
                kept.append(finding)
        return tuple(sorted(kept, key=lambda f: f.start))

    def redact(self, text: str) -> Redacted:
        """``text`` with each finding replaced by ``[kind]``, and the findings."""
        findings = self.find(text)
        out: list[str] = []
        pos = 0
        for finding in findings:
            out.append(text[pos : finding.start])
            out.append(f"[{finding.kind}]")
            pos = finding.end
        out.append(text[pos:])
        return Redacted("".join(out), findings)

    def redact_digits(self, digits: str) -> str:
        """DTMF digits as stored: ``[dtmf]`` when that kind is redacted (and there are any)."""
        if "dtmf" in self._kinds and digits:
            return "[dtmf]"
        return digits

    def silence_spans(
        self, words: Sequence[tuple[str, float, float]]
    ) -> tuple[tuple[float, float], ...]:
        """Time spans of a recording to silence, from STT word timings ``(word, start_s, end_s)``.

        The words (stripped) are joined with single spaces and searched like any text; every
        word that overlaps a finding is silenced. Consecutive silenced words, and spans that
        touch or overlap in time, merge into one span, so the gaps between spoken digits are
        silenced too.
        """
        offsets: list[tuple[int, int, float, float]] = []
        parts: list[str] = []
        pos = 0
        for word, start_s, end_s in words:
            token = word.strip()
            if not token:
                continue
            offsets.append((pos, pos + len(token), start_s, end_s))
            parts.append(token)
            pos += len(token) + 1
        findings = self.find(" ".join(parts))
        if not findings:
            return ()
        spans: list[tuple[float, float]] = []
        prev_hit = False
        for start, end, start_s, end_s in offsets:
            hit = any(f.start < end and start < f.end for f in findings)
            if hit:
                if spans and (prev_hit or start_s <= spans[-1][1]):
                    last_start, last_end = spans[-1]
                    spans[-1] = (min(last_start, start_s), max(last_end, end_s))
                else:
                    spans.append((start_s, end_s))
            prev_hit = hit
        return tuple(spans)


def mask_number(number: str | None, keep: int = 4) -> str | None:
    """A caller ID with every digit but the last ``keep`` replaced by ``*``.

    Other characters (a leading ``+``, separators) stay: ``"+15550100"`` -> ``"+****0100"``.
    A number with no more than ``keep`` digits is masked whole; None stays None.
    """
    if number is None:
        return None
    if keep < 0:
        raise ValueError("keep must be >= 0")
    total = sum(c in "0123456789" for c in number)
    shown = keep if total > keep else 0
    out: list[str] = []
    seen = 0
    for c in number:
        if c in "0123456789":
            seen += 1
            out.append(c if seen > total - shown else "*")
        else:
            out.append(c)
    return "".join(out)
