"""The record of one call, built while it runs: turns, call-control events, faults, outcome.

One :class:`CallRecorder` per call, used on the job's event loop only. Every text is redacted
(:class:`worker.records.redact.Redactor`, the flow's ``records.redact`` kinds) before it is kept,
published to the console or logged; the caller's number is masked and hashed. Writes never wait
on the store: at the end the record goes to the local spool in a thread
(:class:`worker.records.spool.Spool`) and the worker's :class:`worker.records.writer.RecordWriter`
moves it to the store whenever the store is reachable. The live view gets every step through
:class:`worker.records.live.LivePublisher`, which drops events rather than wait.
"""

from __future__ import annotations

import asyncio
import logging
import re
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal

from livekit.agents import AgentSession, AgentStateChangedEvent, UserInputTranscribedEvent

from worker.agent.call_control import CallControl, TransferRefused
from worker.config.records import RecordsConfig
from worker.records.caller_key import caller_key
from worker.records.live import LivePublisher
from worker.records.record import (
    CallEvent,
    CallRecord,
    Direction,
    EndedBy,
    Outcome,
    Recording,
    Turn,
)
from worker.records.redact import Redactor, mask_number
from worker.records.spool import Spool, SpoolFull

__all__ = ["CallRecorder", "follow_session", "supervisor_commands"]

logger = logging.getLogger("voicestack.agent.records")

# Event fields that carry what the caller typed or said: redacted before they are kept.
_PERSONAL_FIELDS = frozenset({"digit", "digits", "text"})
_MAX_TURNS = 2000  # a bound on one record (a call stuck open for hours must not grow forever)
_MAX_EVENTS = 2000


class CallRecorder:
    """Collects one call into a :class:`CallRecord` and streams it to the live view."""

    def __init__(
        self,
        call_id: str,
        cfg: RecordsConfig,
        *,
        secret: bytes,
        direction: Direction = "inbound",
        live: LivePublisher | None = None,
        clock: Callable[[], float] = time.monotonic,
        now: Callable[[], datetime] = lambda: datetime.now(UTC),
    ) -> None:
        self.call_id = call_id
        self._cfg = cfg
        self._secret = secret
        self._live = live
        self._clock = clock
        self._now = now
        self._t0 = clock()
        self._fields: dict[str, object] = {
            "call_id": call_id,
            "direction": direction,
            "started_at": now(),
        }
        self.redactor = Redactor(cfg.redact, region=cfg.phone_region)
        self._turns: list[Turn] = []
        self._events: list[CallEvent] = []
        self._record: CallRecord | None = None
        self._saved = False
        # Digits the caller typed: redacted wherever they show up later in the call (the
        # agent reading an order number back), not only in the keypad event.
        self._typed: set[str] = set()
        # Where in the call personal data was said (for the recording's redaction).
        self._pii: list[tuple[int, float, float]] = []
        self._last_at = {"caller": 0.0, "agent": 0.0}

    # -- during the call ------------------------------------------------------------------------

    def at_s(self) -> float:
        """Seconds since the call started (the record's time base)."""
        return round(max(0.0, self._clock() - self._t0), 3)

    def line(
        self, cfg: RecordsConfig, *, flow: str, called: str | None, caller: str | None
    ) -> None:
        """The call's line is known: its flow's records settings apply from now on."""
        self._cfg = cfg
        self.redactor = Redactor(cfg.redact, region=cfg.phone_region)
        shown = mask_number(caller) if cfg.mask_caller_id else caller
        # A caller ID without digits ("anonymous", a SIP user name) has no number to find.
        has_number = caller is not None and any(c.isdigit() for c in caller)
        self._fields.update(
            flow=flow,
            called=called,
            caller=shown,
            caller_key=caller_key(caller, self._secret) if has_number and caller else None,
        )
        started = self._fields["started_at"]
        assert isinstance(started, datetime)
        self._publish(
            "call_started",
            direction=self._fields["direction"],
            called=called,
            caller=shown,
            flow=flow,
            started_at=started.isoformat(),
        )

    def redact_digits(self, digits: str) -> str:
        """Keys the caller pressed, as logs and records may show them (the line's rules)."""
        return self.redactor.redact_digits(digits)

    def redact(self, text: str) -> str:
        """``text`` with this call's PII kinds replaced (what logs and records may show)."""
        return self._redacted(text)[0]

    def _redacted(self, text: str) -> tuple[str, bool]:
        """The redacted text, and whether anything was redacted."""
        found = self.redactor.redact(text)
        out = found.text
        for digits in self._typed:
            out = re.sub(rf"(?<!\d){re.escape(digits)}(?!\d)", "[dtmf]", out)
        return out, bool(found.findings) or "[dtmf]" in out

    def _turn_window(self, role: Literal["caller", "agent"], at_s: float, pii: bool) -> None:
        # The turn's audio lies between the same side's previous turn and this one (Whisper
        # takes 30 s at most).
        start = max(self._last_at[role], at_s - 30.0)
        self._last_at[role] = at_s
        if pii:
            self._pii.append((0 if role == "caller" else 1, start, at_s))

    @property
    def started_at(self) -> datetime:
        started = self._fields["started_at"]
        assert isinstance(started, datetime)
        return started

    def pii_windows(self) -> list[tuple[int, float, float]]:
        """(channel, start_s, end_s) of each turn whose text held personal data: the spans
        the recording's redaction looks in (channel 0 the caller, 1 the agent)."""
        return list(self._pii)

    def silence_words(self, words: list[tuple[str, float, float]]) -> list[tuple[float, float]]:
        """Of timed words (text, start_s, end_s), the spans to silence: what the redactor
        flags, and any of the digits the caller typed."""
        spans = list(self.redactor.silence_spans(words))
        for text, start, end in words:
            digits = re.sub(r"\D", "", text)
            if len(digits) >= 3 and any(
                digits in typed or typed in digits for typed in self._typed
            ):
                spans.append((start, end))
        return spans

    def state(self, state: str) -> None:
        """The agent's state for the live view: listening, thinking, speaking."""
        self._publish("state", state=state)

    def caller_interim(self, text: str) -> None:
        self._publish("interim", text=self.redact(text))

    def agent_partial(self, text: str) -> None:
        self._publish("agent_partial", text=self.redact(text))

    def caller_turn(self, text: str) -> None:
        """A final caller transcript."""
        clean, pii = self._redacted(text)
        turn = Turn(role="caller", text=clean, at_s=self.at_s())
        self._turn_window("caller", turn.at_s, pii)
        if len(self._turns) < _MAX_TURNS:
            self._turns.append(turn)
        self._publish("caller_turn", text=turn.text, at_s=turn.at_s)

    def agent_turn(
        self, text: str, *, interrupted: bool, latency: Mapping[str, float | None]
    ) -> None:
        """An agent reply as the caller heard it (cut short when interrupted)."""
        clean, pii = self._redacted(text)
        turn = Turn(
            role="agent",
            text=clean,
            at_s=self.at_s(),
            interrupted=interrupted,
            latency={k: round(v, 4) for k, v in latency.items() if v is not None and v >= 0},
        )
        self._turn_window("agent", turn.at_s, pii)
        if len(self._turns) < _MAX_TURNS:
            self._turns.append(turn)
        self._publish(
            "agent_turn",
            text=turn.text,
            at_s=turn.at_s,
            interrupted=interrupted,
            latency=turn.latency,
        )

    def event(self, kind: str, detail: Mapping[str, object]) -> None:
        """A call-control, fault or fallback event; personal fields are redacted."""
        clean: dict[str, str] = {}
        typed = str(detail.get("digits", ""))
        if kind == "digits_collected" and len(typed) >= 3 and "dtmf" in self.redactor.kinds:
            self._typed.add(typed)
        for key, value in detail.items():
            text = str(value)
            if key in ("digit", "digits"):
                text = self.redact_digits(text)
            elif key in _PERSONAL_FIELDS:
                text = self.redact(text)
            clean[key] = text
        event = CallEvent(kind=kind[:64], at_s=self.at_s(), detail=clean)
        if len(self._events) < _MAX_EVENTS:
            self._events.append(event)
        self._publish("event", kind=event.kind, detail=clean)

    # -- the end --------------------------------------------------------------------------------

    @property
    def finished(self) -> bool:
        return self._record is not None

    def finish(
        self, outcome: Outcome, *, ended_by: EndedBy | None = None, detail: str = ""
    ) -> CallRecord:
        """Close the record (the first outcome wins: a transfer stays a transfer when the
        room is deleted afterwards)."""
        if self._record is None:
            self._record = CallRecord.model_validate(
                {
                    **self._fields,
                    "ended_at": self._now(),
                    "outcome": outcome,
                    "ended_by": ended_by,
                    "outcome_detail": self.redact(detail)[:500],
                    "redacted": bool(self._cfg.redact),
                    "turns": tuple(self._turns),
                    "events": tuple(self._events),
                }
            )
            self._publish(
                "call_ended",
                outcome=outcome,
                ended_by=ended_by,
                outcome_detail=self._record.outcome_detail,
            )
        return self._record

    async def save(self, spool: Spool, recording: Recording | None = None) -> Path | None:
        """Put the finished record (with its ``recording``) in the spool (a thread: a disk
        write never stalls the loop); None when it could not be written, which is logged,
        never raised."""
        if self._saved:
            return None
        record = self.finish("completed", ended_by="system", detail="the call ended")
        if recording is not None:
            record = record.model_copy(update={"recording": recording})
        self._saved = True
        try:
            path = await asyncio.to_thread(spool.put, record)
        except SpoolFull as err:
            logger.error("call %s: record not kept: %s", self.call_id, err)
            return None
        except OSError as err:
            logger.error("call %s: record not kept: cannot write the spool: %s", self.call_id, err)
            return None
        logger.info(
            "call %s: record spooled (%d turns, %d events)",
            self.call_id,
            len(record.turns),
            len(record.events),
        )
        return path

    def _publish(self, type_: str, **fields: object) -> None:
        if self._record is not None and type_ != "call_ended":
            return  # the call is over for the console (a last STT final may still come)
        if self._live is not None:
            self._live.publish(self.call_id, type_, **fields)


def follow_session(session: AgentSession, recorder: CallRecorder) -> None:
    """Feed the live view from the session: the caller's interim transcripts and the agent's
    state (final turns come from ``conversation_item_added`` in the job, with their timings)."""

    @session.on("user_input_transcribed")
    def _on_transcript(ev: UserInputTranscribedEvent) -> None:
        if not ev.is_final:
            recorder.caller_interim(ev.transcript)

    @session.on("agent_state_changed")
    def _on_state(ev: AgentStateChangedEvent) -> None:
        recorder.state(ev.new_state)


def supervisor_commands(
    recorder: CallRecorder, control: CallControl
) -> Callable[[dict[str, Any]], Awaitable[tuple[bool, str]]]:
    """The handler of console commands for one call: ``end`` (the line's goodbye, then a
    hang-up) and ``transfer`` to a listed target. Both run on as tasks: the answer says the
    action started; the call's events and outcome say how it went."""
    tasks: set[asyncio.Task[Any]] = set()

    def _spawn(coro: Coroutine[Any, Any, Any]) -> None:
        task = asyncio.create_task(coro)
        tasks.add(task)
        task.add_done_callback(tasks.discard)

    async def handle(command: dict[str, Any]) -> tuple[bool, str]:
        action = command.get("action")
        by = str(command.get("by") or "supervisor")[:100]
        if control.ended:
            return False, "the call is already ending"
        if action == "end":
            recorder.event("supervisor", {"action": "end", "by": by})
            recorder.finish("completed", ended_by="supervisor", detail=f"ended by {by}")
            _spawn(control.hang_up(f"ended by supervisor {by}", control.flow.goodbye))
            return True, "ending the call"
        if action == "transfer":
            target = str(command.get("target") or "")
            try:
                control.resolve_target(target)
            except TransferRefused:
                return False, f"{target!r} is not a transfer target"
            recorder.event("supervisor", {"action": "transfer", "by": by, "target": target})
            _spawn(control.transfer(f"a supervisor ({by}) transferred the call", target=target))
            return True, f"transferring to {target}"
        return False, f"unknown action {action!r}"

    return handle
