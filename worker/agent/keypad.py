"""The caller's keypad: a menu and digit collection as a pure state machine.

DTMF digits (RFC 4733 events that livekit-sip turns into ``sip_dtmf_received`` room events)
and the clock go in; actions come out, for :class:`~worker.agent.call_control.CallControl` to
carry out (speak, transfer, note collected digits). No I/O and no clock of its own, so every
path (a menu choice, an entry ended by ``#``, by its length or by a timeout, a retry, a key
pressed while the agent speaks) is testable without a call::

    pad = Keypad(flow)
    pad.press("2", now)        # [Say("Please enter your order number ...")]
    pad.press("1", now + 1)    # [] (collecting)
    pad.tick(now + 20)         # [Say("Sorry, I didn't get that. ...")] (timeout, too short)
"""

from __future__ import annotations

from dataclasses import dataclass

from worker.config.flows import CollectConfig, Flow

__all__ = ["Collected", "Keypad", "KeypadAction", "Say", "Transfer"]


@dataclass(frozen=True)
class Say:
    """Speak ``text`` to the caller (what was playing stops first: a key is a barge-in)."""

    text: str


@dataclass(frozen=True)
class Transfer:
    """The caller asked for a person by key."""

    key: str


@dataclass(frozen=True)
class Collected:
    """A digit entry ended well: ``digits`` belong in the conversation as ``label``."""

    name: str
    label: str
    digits: str
    confirm: str


KeypadAction = Say | Transfer | Collected


@dataclass
class _Entry:
    name: str
    cfg: CollectConfig
    digits: str = ""
    attempts: int = 1
    last_key_at: float = 0.0


class Keypad:
    """Menu and digit collection of one call's flow."""

    def __init__(self, flow: Flow) -> None:
        self._flow = flow
        self._entry: _Entry | None = None

    @property
    def collecting(self) -> str | None:
        """Name of the entry in progress, if any."""
        return self._entry.name if self._entry is not None else None

    @property
    def deadline(self) -> float | None:
        """When :meth:`tick` has something to do (the entry's keypad timeout), if ever."""
        if self._entry is None:
            return None
        return self._entry.last_key_at + self._entry.cfg.timeout_s

    def start(self, name: str, now: float) -> list[KeypadAction]:
        """Begin collecting entry ``name`` (a flow's ``collect`` key): ask for it."""
        cfg = self._flow.collect[name]
        self._entry = _Entry(name, cfg, last_key_at=now)
        return [Say(cfg.prompt)]

    def press(self, key: str, now: float) -> list[KeypadAction]:
        """The caller pressed ``key`` (0-9, *, #) at ``now``."""
        if len(key) != 1 or key not in "0123456789*#":
            return []  # livekit-sip also reports A-D; no flow uses them
        entry = self._entry
        if entry is not None:
            entry.last_key_at = now
            if key == entry.cfg.terminator:
                return self._finish(entry, now)
            if key.isdigit():
                entry.digits += key
                if len(entry.digits) >= entry.cfg.max_digits:
                    return self._finish(entry, now)
            return []
        transfer = self._flow.transfer
        if transfer is not None and key == transfer.key:
            return [Transfer(key)]
        option = self._flow.menu.get(key)
        if option is None:
            if not self._flow.menu:
                return []  # no menu: stray keys are ignored, the conversation goes on
            return [Say(f"Sorry, {_spoken(key)} is not an option. {self._flow.menu_prompt}")]
        if option.transfer:
            return [Transfer(key)]
        if option.collect is not None:
            return self.start(option.collect, now)
        assert option.say is not None
        return [Say(option.say)]

    def tick(self, now: float) -> list[KeypadAction]:
        """Let time pass: an entry the caller stopped typing into ends after its timeout."""
        entry = self._entry
        if entry is None or now < entry.last_key_at + entry.cfg.timeout_s:
            return []
        return self._finish(entry, now)

    def cancel(self) -> None:
        """Forget an entry in progress (the call is being transferred or ended)."""
        self._entry = None

    def _finish(self, entry: _Entry, now: float) -> list[KeypadAction]:
        cfg = entry.cfg
        if cfg.min_digits <= len(entry.digits) <= cfg.max_digits:
            self._entry = None
            text = cfg.confirm.format(label=cfg.label, digits=_spoken_digits(entry.digits))
            return [Collected(entry.name, cfg.label, entry.digits, text)]
        if entry.attempts >= cfg.max_attempts:
            self._entry = None
            return [Say(f"I still didn't get your {cfg.label}. Let's go on without it.")]
        entry.attempts += 1
        entry.digits = ""
        entry.last_key_at = now
        return [Say(cfg.retry.format(prompt=cfg.prompt, label=cfg.label))]


def _spoken(key: str) -> str:
    return {"*": "star", "#": "hash"}.get(key, key)


def _spoken_digits(digits: str) -> str:
    """ "123456" -> "1 2 3 4 5 6": Piper reads a long number as one figure otherwise."""
    return " ".join(digits)
