"""Outbound calls: ``voicestack call NUMBER`` dials through a provisioned outbound trunk.

The call gets a room of its own; our agent is dispatched into it first (explicit dispatch, with
the call's context in the job metadata: purpose, customer name, flow, digits to key in once
answered), then livekit-sip dials the number (``CreateSIPParticipant``, waiting until it is
answered). The outcome is one of :class:`Outcome`, each with its own exit status, so a dialer
script can branch on it. Bad input (not a number, an unknown trunk, a number outside the
trunk's ``destinations``, a trunk LiveKit does not have) is refused before anything is dialled.
"""

from __future__ import annotations

import asyncio
import re
import uuid
from dataclasses import dataclass, field
from enum import StrEnum

import aiohttp
from google.protobuf.duration_pb2 import Duration
from livekit import api

from worker.agent.job_context import OutboundContext
from worker.config.telephony import OutboundTrunkConfig, TelephonyConfig, check_number

__all__ = [
    "CallRequest",
    "CallResult",
    "OutboundError",
    "Outcome",
    "place_call",
]

_DIGITS = re.compile(r"^[0-9*#]{1,32}$")


class Outcome(StrEnum):
    """How an outbound call ended up; :attr:`exit_code` is the CLI's exit status."""

    ANSWERED = "answered"
    BUSY = "busy"
    NO_ANSWER = "no_answer"
    FAILED = "failed"
    INVALID_NUMBER = "invalid_number"

    @property
    def exit_code(self) -> int:
        codes = {"answered": 0, "busy": 3, "no_answer": 4, "failed": 5, "invalid_number": 6}
        return codes[self.value]


class OutboundError(ValueError):
    """The request was refused before dialling (exit status 2); the message says why."""


@dataclass(frozen=True)
class CallRequest:
    """One outbound call."""

    number: str
    trunk: str | None = None
    """Outbound trunk name (default: the only one configured)."""
    purpose: str = ""
    customer: str = ""
    flow: str | None = None
    """The flow (line) the agent speaks for (default: the flows file's default)."""
    dtmf: str = ""
    """Digits the agent keys in once answered (e.g. an extension behind an IVR)."""


@dataclass
class CallResult:
    """What happened to a :class:`CallRequest`."""

    outcome: Outcome
    room: str
    sip_status: int | None = None
    detail: str = ""
    notes: list[str] = field(default_factory=list)


def _validate(cfg: TelephonyConfig, req: CallRequest) -> tuple[OutboundTrunkConfig, str]:
    """The trunk to dial through and the number, cleaned; ``OutboundError`` otherwise."""
    try:
        number = check_number(req.number)
    except ValueError as err:
        raise OutboundError(str(err)) from None
    if req.dtmf and not _DIGITS.match(req.dtmf):
        raise OutboundError(f"--dtmf {req.dtmf!r}: only 0-9, * and # (at most 32)")
    if len(req.purpose) > 300 or len(req.customer) > 100:
        raise OutboundError("purpose (300) or customer (100 characters) is too long")
    trunks = {t.name: t for t in cfg.outbound_trunks}
    if not trunks:
        raise OutboundError("config/telephony.yaml has no outbound_trunks")
    if req.trunk is None:
        if len(trunks) > 1:
            raise OutboundError(f"several outbound trunks: name one ({', '.join(trunks)})")
        trunk = next(iter(trunks.values()))
    elif req.trunk in trunks:
        trunk = trunks[req.trunk]
    else:
        raise OutboundError(
            f"unknown outbound trunk {req.trunk!r}; configured: {', '.join(trunks)}"
        )
    if not trunk.allows(number):
        raise OutboundError(
            f"{number} is outside the destinations of trunk {trunk.name!r} "
            f"({', '.join(trunk.destinations)})"
        )
    return trunk, number


def classify(status: int | None) -> Outcome:
    """The outcome a failed dial's SIP status means."""
    if status in (486, 600, 603):
        return Outcome.BUSY
    if status in (408, 480, 487):
        return Outcome.NO_ANSWER
    if status in (404, 484, 604):  # Not Found, Address Incomplete, Does Not Exist Anywhere
        return Outcome.INVALID_NUMBER
    return Outcome.FAILED


async def place_call(
    cfg: TelephonyConfig,
    req: CallRequest,
    *,
    url: str,
    api_key: str,
    api_secret: str,
) -> CallResult:
    """Dispatch the agent and dial ``req.number``; returns once answered or failed.

    Raises :class:`OutboundError` for a request refused before dialling (nothing dialled).
    """
    trunk, number = _validate(cfg, req)
    room = f"out-{uuid.uuid4().hex[:12]}"
    timeout = aiohttp.ClientTimeout(total=trunk.ringing_timeout_s + 30)
    async with api.LiveKitAPI(url, api_key, api_secret, timeout=timeout, failover=False) as lk:
        listed = await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())
        ids = [t.sip_trunk_id for t in listed.items if t.name == trunk.name]
        if not ids:
            raise OutboundError(
                f"LiveKit has no outbound trunk {trunk.name!r}: run `voicestack provision`"
            )
        context = OutboundContext(
            number, req.purpose, req.customer, req.flow, req.dtmf, caller_id=trunk.numbers[0]
        )
        await lk.agent_dispatch.create_dispatch(
            api.CreateAgentDispatchRequest(
                agent_name=cfg.agent_name, room=room, metadata=context.to_metadata()
            )
        )
        try:
            await lk.sip.create_sip_participant(
                api.CreateSIPParticipantRequest(
                    sip_trunk_id=ids[0],
                    sip_call_to=number,
                    room_name=room,
                    participant_identity=f"sip_{number.lstrip('+')}",
                    participant_name=req.customer or number,
                    wait_until_answered=True,
                    ringing_timeout=Duration(seconds=int(trunk.ringing_timeout_s)),
                    max_call_duration=Duration(seconds=int(trunk.max_call_duration_s)),
                )
            )
        except asyncio.CancelledError:
            raise
        except api.SipCallError as err:
            await _drop_room(lk, room)
            status = err.sip_status_code
            return CallResult(classify(status), room, status, err.sip_status or err.message)
        except (api.TwirpError, TimeoutError, aiohttp.ClientError) as err:
            await _drop_room(lk, room)
            detail = getattr(err, "message", "") or type(err).__name__
            return CallResult(_unanswered_or_failed(err, detail), room, None, detail)
    return CallResult(Outcome.ANSWERED, room)


def _unanswered_or_failed(err: BaseException, detail: str) -> Outcome:
    # livekit-sip v1.11 ends a call that rang past its ringing timeout with a bare twirp
    # error "sip request timed out" (no SIP status): the phone rang, nobody answered.
    if isinstance(err, TimeoutError) or "timed out" in detail:
        return Outcome.NO_ANSWER
    if isinstance(err, api.TwirpError) and err.code == "deadline_exceeded":
        return Outcome.NO_ANSWER
    return Outcome.FAILED


async def _drop_room(lk: api.LiveKitAPI, room: str) -> None:
    # The dispatched agent waits in the room for a callee who will not come: end it now.
    try:
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
    except api.TwirpError:
        pass  # already gone
