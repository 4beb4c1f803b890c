"""Typed call flows (``config/flows.yaml``): what the agent does on each called number.

A flow is one line of the call center: its greeting and persona, a keypad menu, digit
collection (an order or account number), where a caller may be transferred to a person, what
ends the call, and its business hours. The agent picks the flow by the number the caller
dialled (the SIP participant's ``sip.trunkPhoneNumber``); the flow marked ``default`` takes
every other number. Transfers go only to the named targets of ``transfer_targets``: a caller can
talk a language model into anything, so no target ever comes from the conversation.

Loaded once by the agent worker (path: ``flows`` in ``config/agent.yaml``) and checked by
``voicestack check-config``; every section forbids unknown keys.
"""

from __future__ import annotations

import re
from datetime import datetime, time
from pathlib import Path
from typing import Annotated, Literal, Self
from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.config.loader import load_model
from worker.config.records import FlowRecords
from worker.config.telephony import check_number

__all__ = [
    "DEFAULT_FLOWS",
    "CollectConfig",
    "Flow",
    "FlowsConfig",
    "HoursConfig",
    "MenuOption",
    "TransferConfig",
    "load_flows",
]

_Name = Annotated[str, Field(min_length=1, max_length=64, pattern=r"^[a-z0-9][a-z0-9_-]*$")]
_Text = Annotated[str, Field(min_length=1, max_length=600)]
_Key = Annotated[str, Field(pattern=r"^[0-9*#]$")]
# sip:user@host[:port] with a numeric or simple host; no parameters or headers a caller could
# smuggle a second destination into.
_SIP_URI = re.compile(r"^(sip|tel):[A-Za-z0-9+_.-]+(@[A-Za-z0-9.-]+(:[0-9]{1,5})?)?$")
_DAYS = ("mon", "tue", "wed", "thu", "fri", "sat", "sun")
_SPAN = re.compile(r"^([01][0-9]|2[0-3]):([0-5][0-9])-([01][0-9]|2[0-4]):([0-5][0-9])$")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


class TransferConfig(_Strict):
    """Handing the caller to a person (a cold transfer: SIP REFER through livekit-sip)."""

    target: _Name
    """Name of an entry of ``transfer_targets``."""
    key: _Key | None = "0"
    """Keypad key that asks for a person at any time (None: no key)."""
    phrases: tuple[Annotated[str, Field(min_length=2)], ...] = (
        "a person",
        "a human",
        "a real person",
        "an agent",
        "a representative",
        "an operator",
        "someone real",
        "a colleague",
        "a manager",
    )
    """A final transcript that contains one of these (case-insensitive, whole words) after an
    ask ("talk to", "speak to", "speak with", "connect me", "transfer me", "put me through",
    "get me") asks for a person: a rule that works with any model, tool calls or not."""
    handover: _Text = "Of course. I'm transferring you to a colleague now. Please stay on the line."
    failed: _Text = (
        "I'm sorry, I couldn't reach a colleague right now. I can keep helping you here."
    )
    after_failure: Literal["continue", "hang_up"] = "continue"
    ringing_timeout_s: Annotated[float, Field(gt=0, le=120)] = 30.0


class MenuOption(_Strict):
    """One keypad choice: say something, collect digits, or transfer (exactly one)."""

    say: _Text | None = None
    collect: _Name | None = None
    transfer: bool = False

    @model_validator(mode="after")
    def _one_action(self) -> Self:
        actions = [self.say is not None, self.collect is not None, self.transfer]
        if sum(actions) != 1:
            raise ValueError("a menu option needs exactly one of say, collect, transfer: true")
        return self


class CollectConfig(_Strict):
    """Keypad digit collection: the digits land in the conversation as a note for the model."""

    prompt: _Text
    label: Annotated[str, Field(min_length=1, max_length=60)]
    """What the digits are ("order number"), for the note and the confirmation."""
    min_digits: Annotated[int, Field(ge=1, le=32)] = 1
    max_digits: Annotated[int, Field(ge=1, le=32)] = 12
    terminator: Literal["#", "*"] | None = "#"
    timeout_s: Annotated[float, Field(gt=0, le=60)] = 8.0
    """Silence on the keypad this long ends the entry (too few digits: asked again)."""
    confirm: _Text = "Thank you. I have your {label}: {digits}."
    retry: _Text = "Sorry, I didn't get that. {prompt}"
    max_attempts: Annotated[int, Field(ge=1, le=5)] = 2

    @model_validator(mode="after")
    def _range(self) -> Self:
        if self.min_digits > self.max_digits:
            raise ValueError(f"min_digits {self.min_digits} > max_digits {self.max_digits}")
        return self


class HoursConfig(_Strict):
    """When the line is open; outside those hours the caller hears ``closed_message``."""

    timezone: str = "UTC"
    open: dict[str, Annotated[str, Field(pattern=_SPAN.pattern)]]
    """Day (mon..sun) -> "HH:MM-HH:MM"; a missing day is closed."""
    closed_message: _Text
    when_closed: Literal["hang_up", "transfer", "continue"] = "hang_up"

    @field_validator("timezone")
    @classmethod
    def _zone(cls, value: str) -> str:
        try:
            ZoneInfo(value)
        except (ZoneInfoNotFoundError, ValueError):
            raise ValueError(
                f"unknown time zone {value!r} (an IANA name such as Europe/Berlin)"
            ) from None
        return value

    @field_validator("open")
    @classmethod
    def _days(cls, value: dict[str, str]) -> dict[str, str]:
        for day, span in value.items():
            if day not in _DAYS:
                raise ValueError(f"unknown day {day!r}; use {', '.join(_DAYS)}")
            m = _SPAN.match(span)
            assert m is not None
            if (int(m[1]), int(m[2])) >= (int(m[3]), int(m[4])):
                raise ValueError(f"{day}: {span} ends before it starts")
        return value

    def is_open(self, at: datetime) -> bool:
        """Whether the line is open at ``at`` (an aware datetime, any zone)."""
        local = at.astimezone(ZoneInfo(self.timezone))
        span = self.open.get(_DAYS[local.weekday()])
        if span is None:
            return False
        m = _SPAN.match(span)
        assert m is not None
        start = time(int(m[1]), int(m[2]))
        now = local.time().replace(tzinfo=None)
        if m[3] == "24":
            return now >= start
        return start <= now < time(int(m[3]), int(m[4]))


class Flow(_Strict):
    """One line of the call center."""

    name: _Name
    numbers: tuple[str, ...] = ()
    """Called numbers this flow answers (as the trunk delivers them)."""
    default: bool = False
    """Answers every number no other flow names (one flow at most)."""
    greeting: _Text | None = None
    """What the agent says first on this line (default: ``persona.greeting`` of agent.yaml)."""
    system_prompt: Annotated[str, Field(min_length=1, max_length=4000)] | None = None
    """The model's instructions on this line (default: ``persona.system_prompt``)."""
    outbound_greeting: _Text = "Hello {customer}. I'm calling about {purpose}."
    """What the agent says when the callee of ``voicestack call`` answers (``{customer}``,
    ``{purpose}`` from the command line)."""
    menu_prompt: _Text | None = None
    """Spoken after the greeting when the flow has a menu."""
    menu: dict[_Key, MenuOption] = Field(default_factory=dict)
    collect: dict[_Name, CollectConfig] = Field(default_factory=dict)
    transfer: TransferConfig | None = None
    goodbye_phrases: tuple[Annotated[str, Field(min_length=2)], ...] = (
        "goodbye",
        "good bye",
        "bye bye",
        "that's all",
        "that is all",
        "hang up",
    )
    """A final transcript containing one of these ends the call after ``goodbye``."""
    goodbye: _Text = "Thank you for calling. Goodbye."
    hours: HoursConfig | None = None
    records: FlowRecords | None = None
    """This line's overrides of agent.yaml ``records:`` (recording, redaction, caller-ID
    masking)."""

    @field_validator("numbers")
    @classmethod
    def _numbers(cls, values: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(check_number(v) for v in values)

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        if not self.numbers and not self.default:
            raise ValueError(f"flow {self.name!r} has no numbers and is not the default")
        for key, option in self.menu.items():
            if option.collect is not None and option.collect not in self.collect:
                raise ValueError(
                    f"flow {self.name!r}: menu key {key} collects {option.collect!r}, "
                    "which is not under collect"
                )
            if option.transfer and self.transfer is None:
                raise ValueError(f"flow {self.name!r}: menu key {key} transfers, but no transfer")
        if self.menu and self.menu_prompt is None:
            raise ValueError(f"flow {self.name!r} has a menu but no menu_prompt")
        if self.transfer is not None and self.transfer.key is not None:
            if self.transfer.key in self.menu and not self.menu[self.transfer.key].transfer:
                raise ValueError(
                    f"flow {self.name!r}: key {self.transfer.key} is both the transfer key and "
                    "another menu choice"
                )
        if self.hours is not None and self.hours.when_closed == "transfer" and not self.transfer:
            raise ValueError(f"flow {self.name!r}: hours.when_closed is transfer, but no transfer")
        return self


class FlowsConfig(_Strict):
    """All flows and the transfer allowlist."""

    transfer_targets: dict[_Name, str] = Field(default_factory=dict)
    """Name -> SIP or tel URI: the only destinations a call may be transferred to."""
    flows: tuple[Flow, ...] = Field(min_length=1)

    @field_validator("transfer_targets")
    @classmethod
    def _uris(cls, value: dict[str, str]) -> dict[str, str]:
        for name, uri in value.items():
            if not _SIP_URI.match(uri):
                raise ValueError(
                    f"transfer target {name!r}: {uri!r} is not a plain sip:user@host[:port] or "
                    "tel: URI (no parameters or headers)"
                )
        return value

    @model_validator(mode="after")
    def _consistent(self) -> Self:
        names = [f.name for f in self.flows]
        if len(set(names)) != len(names):
            raise ValueError("flow names must be unique")
        defaults = [f.name for f in self.flows if f.default]
        if len(defaults) > 1:
            raise ValueError(f"more than one default flow: {', '.join(defaults)}")
        seen: dict[str, str] = {}
        for flow in self.flows:
            for number in flow.numbers:
                if number in seen:
                    raise ValueError(
                        f"number {number} is in flows {seen[number]!r} and {flow.name!r}"
                    )
                seen[number] = flow.name
            if flow.transfer is not None and flow.transfer.target not in self.transfer_targets:
                raise ValueError(
                    f"flow {flow.name!r}: transfer target {flow.transfer.target!r} is not in "
                    f"transfer_targets ({', '.join(self.transfer_targets) or 'empty'})"
                )
        return self

    def for_number(self, called: str | None) -> Flow | None:
        """The flow answering ``called`` (None if no flow does: the call is not ours)."""
        if called:
            for flow in self.flows:
                if called in flow.numbers:
                    return flow
        return next((f for f in self.flows if f.default), None)

    def by_name(self, name: str) -> Flow | None:
        """The flow called ``name``, if any."""
        return next((f for f in self.flows if f.name == name), None)

    def transfer_uri(self, name: str) -> str:
        """The allowlisted URI of target ``name``; ``KeyError`` for anything else."""
        return self.transfer_targets[name]


def load_flows(path: str | Path) -> FlowsConfig:
    """Read and validate ``config/flows.yaml`` (raises ``ConfigError`` naming file and key)."""
    return load_model(path, FlowsConfig)


DEFAULT_FLOWS = FlowsConfig(flows=(Flow(name="default", default=True),))
"""Without a flows file: one line, the persona of agent.yaml, no transfer target."""
