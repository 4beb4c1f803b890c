"""Call control of one call: transfer to a person, keypad menu and digits, hang-up, DTMF out.

The job (:mod:`worker.agent.session`) owns one :class:`CallControl` per call and feeds it the
caller's keys (``sip_dtmf_received``) and final transcripts; it decides from the call's
:class:`~worker.config.flows.Flow` and acts through LiveKit:

- **Transfer** (cold, SIP REFER via ``TransferSIPParticipant``): on the transfer key, a
  request for a person in the transcript (:mod:`worker.agent.intents`), a menu choice, after
  hours, or as the reliability fallback. The target is always a name looked up in the
  ``transfer_targets`` allowlist; anything else is refused and logged, never sent. The agent
  says the handover line first; a failed or rejected REFER is explained to the caller and the
  call continues (or ends, per the flow), never silence.
- **Keypad**: :class:`~worker.agent.keypad.Keypad` runs the menu and digit entries; a key
  stops the agent's speech (barge-in by keypad); collected digits become a note in the
  conversation so the model can use them.
- **Hang-up**: after a goodbye, once its audio has been played, the room is deleted, which
  makes livekit-sip send BYE; nothing lingers.
- **DTMF out**: :meth:`CallControl.send_dtmf` publishes digits to the SIP leg (an outbound
  call that meets an IVR).

Every decision is logged as a call event (``call <id> event <kind> key=value ...``), the
record the tests and operators read.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import time
from collections.abc import Awaitable, Callable, Coroutine
from datetime import UTC, datetime
from typing import Any

from google.protobuf.duration_pb2 import Duration
from livekit import api, rtc
from livekit.agents import AgentSession, JobContext

from worker.agent.intents import asks_for_person, says_goodbye
from worker.agent.keypad import Collected, Keypad, KeypadAction, Say, Transfer
from worker.config.flows import Flow, FlowsConfig

__all__ = ["CallControl", "TransferRefused", "call_event", "dtmf_code", "observe_call_events"]

logger = logging.getLogger("voicestack.agent")

# RFC 4733 event codes: 0-9, then *, #, A-D.
_DTMF_CODES = {key: code for code, key in enumerate("0123456789*#ABCD")}
# livekit-sip sends each digit as an RFC 4733 event of this length plus a pause.
_DTMF_GAP_S = 0.25
# Audio still on its way to the caller when the agent's playout ends (WebRTC, livekit-sip and
# phone jitter buffers): waited out before a hang-up.
_HANG_UP_TAIL_S = 0.8
# The REFER is answered at once; the NOTIFY that ends it comes when the target answers.
_TRANSFER_SLACK_S = 10.0


class TransferRefused(ValueError):
    """A transfer target that is not in the allowlist."""


EventSink = Callable[[str, dict[str, object]], None]
_sinks: dict[str, EventSink] = {}


def observe_call_events(call_id: str, sink: EventSink | None) -> None:
    """Send every event of ``call_id`` to ``sink`` too (the call's record); None stops."""
    if sink is None:
        _sinks.pop(call_id, None)
    else:
        _sinks[call_id] = sink


def call_event(
    call_id: str, kind: str, *, personal: dict[str, object] | None = None, **fields: object
) -> None:
    """Log one call event in the one format tests and operators grep for. ``personal``: the
    unmasked values of fields the log shows masked; only the call's record sees them (and
    redacts them by its own rules)."""
    detail = " ".join(f"{k}={v}" for k, v in fields.items())
    logger.info("call %s event %s%s", call_id, kind, f" {detail}" if detail else "")
    sink = _sinks.get(call_id)
    if sink is not None:
        sink(kind, {**fields, **(personal or {})})


def dtmf_code(digit: str) -> int:
    """RFC 4733 event code of a keypad digit; ``ValueError`` for anything else."""
    try:
        return _DTMF_CODES[digit]
    except KeyError:
        raise ValueError(f"{digit!r} is not a DTMF digit (0-9, *, #, A-D)") from None


class CallControl:
    """Transfers, keypad, hang-up and DTMF of one call (used on the job's event loop only)."""

    def __init__(
        self,
        ctx: JobContext,
        session: AgentSession,
        flows: FlowsConfig,
        flow: Flow,
        *,
        call_id: str,
        caller: Callable[[], rtc.RemoteParticipant | None],
        on_note: Callable[[str, str], Awaitable[None]],
        log_personal: bool = False,
        redact_digits: Callable[[str], str] = str,
        redact_text: Callable[[str], str] = str,
        hang_up_tail_s: float = _HANG_UP_TAIL_S,
    ) -> None:
        self._ctx = ctx
        self._session = session
        self._flows = flows
        self.flow = flow
        self._call_id = call_id
        self._caller = caller
        self._on_note = on_note
        # What callers say and type (account numbers) is personal data: logged only when the
        # operator turned worker.log_transcripts on.
        self._log_personal = log_personal
        # ... and even then through the line's redaction (records.redact: dtmf, card, ...).
        self._redact_digits = redact_digits
        self._redact_text = redact_text
        self.keypad = Keypad(flow)
        self._tail_s = hang_up_tail_s
        self._busy = False  # a transfer or hang-up is under way: ignore further triggers
        self._ticker: asyncio.Task[None] | None = None
        self._tasks: set[asyncio.Task[object]] = set()
        self.ended = False

    # -- inputs ---------------------------------------------------------------------------------

    def on_dtmf(self, digit: str) -> None:
        """A key from the caller (room event); acts at once, interrupting the agent."""
        shown = self._redact_digits(digit) if self._log_personal else "*"
        call_event(self._call_id, "dtmf", digit=shown, personal={"digit": digit})
        if self._busy:
            return
        actions = self.keypad.press(digit, time.monotonic())
        if actions or self.keypad.collecting:
            # A key is a barge-in: whatever the agent says stops at once (the greeting too:
            # a caller who knows the menu presses before it ends).
            if self._session.agent_state == "speaking":
                call_event(self._call_id, "barge_in", by="key")
            with contextlib.suppress(RuntimeError):  # nothing playing / session closing
                self._session.interrupt(force=True)
        self._spawn(self._run(actions))
        self._arm_ticker()

    def intercept(self, transcript: str) -> bool:
        """Called with each final caller turn before the model answers; True when call
        control takes the turn (a transfer or a goodbye), so the model must not answer."""
        if self._log_personal:
            logger.info("call %s: caller turn: %s", self._call_id, self._redact_text(transcript))
        if self._busy:
            return True
        transfer = self.flow.transfer
        if transfer is not None and asks_for_person(transcript, transfer.phrases):
            call_event(self._call_id, "transfer_requested", by="speech")
            self._spawn(self.transfer("the caller asked for a person"))
            return True
        if says_goodbye(transcript, self.flow.goodbye_phrases):
            call_event(self._call_id, "goodbye", by="caller")
            self._spawn(self.hang_up("the caller said goodbye", self.flow.goodbye))
            return True
        return False

    # -- actions --------------------------------------------------------------------------------

    async def transfer(self, reason: str, *, target: str | None = None, say: bool = True) -> bool:
        """Cold-transfer the caller to ``target`` (a ``transfer_targets`` name; default: the
        flow's). Returns True when the REFER succeeded; on failure the caller hears why."""
        cfg = self.flow.transfer
        name = target or (cfg.target if cfg is not None else None)
        if name is None:
            call_event(self._call_id, "transfer_refused", reason="no_target")
            return False
        try:
            uri = self.resolve_target(name)
        except TransferRefused as err:
            logger.error("call %s: %s", self._call_id, err)
            call_event(self._call_id, "transfer_refused", target=name)
            return False
        if self._busy:
            return False
        self._busy = True
        self.keypad.cancel()
        caller = self._caller()
        if caller is None:
            self._busy = False
            return False
        if say and cfg is not None:
            await self._say(cfg.handover, interruptible=False)
        call_event(self._call_id, "transfer_started", target=name, reason=reason.replace(" ", "_"))
        ringing = cfg.ringing_timeout_s if cfg is not None else 30.0
        try:
            async with asyncio.timeout(ringing + _TRANSFER_SLACK_S):
                await self._ctx.api.sip.transfer_sip_participant(
                    api.TransferSIPParticipantRequest(
                        room_name=self._ctx.room.name,
                        participant_identity=caller.identity,
                        transfer_to=uri,
                        ringing_timeout=Duration(seconds=int(ringing)),
                    )
                )
        except asyncio.CancelledError:
            raise
        except Exception as err:  # TwirpError (REFER rejected / NOTIFY failure) or timeout
            detail = getattr(err, "message", "") or type(err).__name__
            call_event(self._call_id, "transfer_failed", target=name, error=_token(detail))
            self._busy = False
            if cfg is not None and self._caller() is not None:
                if cfg.after_failure == "hang_up":
                    await self.hang_up("transfer failed", cfg.failed)
                else:
                    await self._say(cfg.failed)
            return False
        call_event(self._call_id, "transferred", target=name)
        self.ended = True
        # livekit-sip hangs up its leg after the transfer; nothing of the call may linger.
        await self._ctx.delete_room()
        self._ctx.shutdown(reason=f"transferred to {name}")
        return True

    def resolve_target(self, name_or_uri: str) -> str:
        """The allowlisted URI for a target name (or an allowlisted URI itself)."""
        targets = self._flows.transfer_targets
        if name_or_uri in targets:
            return targets[name_or_uri]
        if name_or_uri in targets.values():
            return name_or_uri
        raise TransferRefused(
            f"transfer target {name_or_uri!r} is not in transfer_targets; refused"
        )

    async def hang_up(self, reason: str, message: str | None = None) -> None:
        """Say ``message`` (if any), wait until it has been played, then end the call."""
        if self.ended:
            return
        self._busy = True
        self.keypad.cancel()
        if message:
            await self._say(message, interruptible=False)
            # "Played" means handed to WebRTC; livekit-sip's and the phone's jitter buffers
            # still hold the last words. Hanging up at once cut "Goodbye." in half.
            await asyncio.sleep(self._tail_s)
        self.ended = True
        call_event(self._call_id, "hang_up", reason=reason.replace(" ", "_"))
        await self._ctx.delete_room()  # livekit-sip sends BYE to the caller
        self._ctx.shutdown(reason=reason)

    async def send_dtmf(self, digits: str) -> None:
        """Play ``digits`` on the SIP leg as RFC 4733 events (e.g. to an IVR)."""
        codes = [(d, dtmf_code(d)) for d in digits]  # validate all before sending any
        for digit, code in codes:
            await self._ctx.room.local_participant.publish_dtmf(code=code, digit=digit)
            await asyncio.sleep(_DTMF_GAP_S)
        call_event(self._call_id, "dtmf_sent", digits=digits)

    async def open_line(self) -> bool:
        """Outside the flow's business hours: play the closed message and act; returns
        False when the call does not go on to the conversation."""
        hours = self.flow.hours
        if hours is None or hours.is_open(_now()):
            return True
        call_event(self._call_id, "closed", action=hours.when_closed)
        if hours.when_closed == "hang_up":
            await self.hang_up("after hours", hours.closed_message)
            return False
        await self._say(hours.closed_message, interruptible=False)
        if hours.when_closed == "transfer":
            return not await self.transfer("after hours", say=False)
        return True

    async def aclose(self) -> None:
        """Stop the keypad timer and any action in progress (the call is over)."""
        tasks = [t for t in (self._ticker, *self._tasks) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)

    # -- internals ------------------------------------------------------------------------------

    async def _run(self, actions: list[KeypadAction]) -> None:
        for action in actions:
            if isinstance(action, Say):
                await self._say(action.text)
            elif isinstance(action, Transfer):
                call_event(self._call_id, "transfer_requested", by="key", key=action.key)
                await self.transfer("the caller pressed the transfer key")
            elif isinstance(action, Collected):
                if self._log_personal:
                    shown = self._redact_digits(action.digits)
                else:
                    shown = f"<{len(action.digits)} digits>"
                call_event(
                    self._call_id,
                    "digits_collected",
                    name=action.name,
                    digits=shown,
                    personal={"digits": action.digits},
                )
                await self._on_note(
                    f"The caller entered their {action.label} on the keypad: {action.digits}.",
                    action.digits,
                )
                await self._say(action.confirm)

    def _arm_ticker(self) -> None:
        if self.keypad.deadline is None or (self._ticker and not self._ticker.done()):
            return
        self._ticker = asyncio.create_task(self._tick(), name=f"keypad-{self._call_id}")

    async def _tick(self) -> None:
        while (deadline := self.keypad.deadline) is not None:
            await asyncio.sleep(max(0.0, deadline - time.monotonic()) + 0.01)
            actions = self.keypad.tick(time.monotonic())
            if actions:
                await self._run(actions)

    async def _say(self, text: str, *, interruptible: bool = True) -> None:
        try:
            handle = self._session.say(text, allow_interruptions=interruptible)
            await handle.wait_for_playout()
        except RuntimeError as err:  # the session is closing: the caller has gone
            logger.info("call %s: could not say %r: %s", self._call_id, text[:40], err)

    def _spawn(self, coro: Coroutine[Any, Any, object]) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._done)

    def _done(self, task: asyncio.Task[object]) -> None:
        self._tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            logger.error("call %s: call control failed", self._call_id, exc_info=task.exception())


def _token(text: str) -> str:
    return "_".join(text.split())[:120] or "unknown"


def _now() -> datetime:
    return datetime.now(UTC)
