"""The call record built during a call: redaction of every text, typed digits hidden wherever
they come back, the first outcome wins, and the record reaches the spool without the call
waiting (no LiveKit, no store: the recorder only talks to a spool and a publisher)."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from worker.agent.call_control import TransferRefused, call_event, observe_call_events
from worker.agent.call_record import CallRecorder, supervisor_commands
from worker.config.records import RecordsConfig
from worker.records.caller_key import caller_key
from worker.records.record import CallRecord
from worker.records.spool import Spool, SpoolFull

SECRET = b"k" * 32
CARD = "4111 1111 1111 1111"


class Published:
    """Stands in for LivePublisher: keeps what would go to the consoles."""

    def __init__(self) -> None:
        self.events: list[dict[str, Any]] = []

    def publish(self, call_id: str, type: str, **fields: object) -> None:
        self.events.append({"type": type, "call_id": call_id, **fields})

    def of(self, type_: str) -> list[dict[str, Any]]:
        return [e for e in self.events if e["type"] == type_]


def recorder(
    cfg: RecordsConfig | None = None, live: Published | None = None
) -> tuple[CallRecorder, list[float]]:
    clock = [100.0]
    rec = CallRecorder(
        "call-1",
        cfg or RecordsConfig(),
        secret=SECRET,
        live=live,  # type: ignore[arg-type]
        clock=lambda: clock[0],
        now=lambda: datetime(2026, 12, 5, 12, 0, tzinfo=UTC),
    )
    return rec, clock


def test_line_masks_the_caller_and_keys_the_full_number() -> None:
    live = Published()
    rec, _ = recorder(live=live)
    rec.line(RecordsConfig(), flow="support", called="+15550100", caller="+14155552671")
    record = rec.finish("completed", ended_by="caller")
    assert record.caller == "+*******2671"
    assert record.caller_key == caller_key("+14155552671", SECRET)
    assert record.flow == "support" and record.called == "+15550100"
    started = live.of("call_started")[0]
    assert started["caller"] == "+*******2671" and "4155552671" not in str(live.events)


def test_unmasked_caller_when_the_line_says_so() -> None:
    rec, _ = recorder()
    rec.line(RecordsConfig(mask_caller_id=False), flow="f", called=None, caller="+14155552671")
    assert rec.finish("completed").caller == "+14155552671"


def test_turns_are_redacted_timed_and_carry_latency() -> None:
    live = Published()
    rec, clock = recorder(live=live)
    clock[0] = 102.5
    rec.caller_interim(f"my card is {CARD[:9]}")
    rec.caller_turn(f"my card is {CARD} and my mail is jo@example.com")
    clock[0] = 104.0
    rec.agent_partial("Thanks, I have")
    rec.agent_turn(
        "Thanks, I have your card.",
        interrupted=True,
        latency={"stt": 0.2, "llm_ttft": 0.31, "e2e": 0.9, "tts_ttfb": -1.0},
    )
    record = rec.finish("completed", ended_by="caller")
    caller, agent = record.turns
    assert caller.role == "caller" and caller.at_s == 2.5
    assert caller.text == "my card is [card] and my mail is [email]"
    assert agent.interrupted and agent.at_s == 4.0
    assert agent.latency == {"stt": 0.2, "llm_ttft": 0.31, "e2e": 0.9}  # negative: clock skew
    assert CARD not in str(live.events) and "jo@example.com" not in str(live.events)
    assert [e["type"] for e in live.events] == [
        "interim",
        "caller_turn",
        "agent_partial",
        "agent_turn",
        "call_ended",
    ]


def test_typed_digits_are_hidden_in_events_and_wherever_they_come_back() -> None:
    rec, _ = recorder()
    observe_call_events("call-1", rec.event)
    try:
        call_event("call-1", "dtmf", digit="*", personal={"digit": "7"})
        call_event(
            "call-1", "digits_collected", name="order", digits="<6 digits>",
            personal={"digits": "123456"},
        )  # fmt: skip
        call_event("call-2", "dtmf", digit="*", personal={"digit": "9"})  # another call
    finally:
        observe_call_events("call-1", None)
    call_event("call-1", "dtmf", digit="*", personal={"digit": "8"})  # no longer observed
    rec.agent_turn("Your order 123456 ships today; ref 1234567.", interrupted=False, latency={})
    record = rec.finish("completed")
    assert [(e.kind, e.detail) for e in record.events] == [
        ("dtmf", {"digit": "[dtmf]"}),
        ("digits_collected", {"name": "order", "digits": "[dtmf]"}),
    ]
    # The typed number is gone; a longer number that merely contains it is not touched.
    assert record.turns[0].text == "Your order [dtmf] ships today; ref 1234567."
    assert rec.redact("order 123456") == "order [dtmf]"


def test_a_line_without_dtmf_redaction_keeps_typed_digits() -> None:
    rec, _ = recorder()
    rec.line(RecordsConfig(redact=("card",)), flow="f", called=None, caller=None)
    rec.event("digits_collected", {"digits": "123456"})
    assert rec.finish("completed").events[0].detail == {"digits": "123456"}


def test_the_first_outcome_wins() -> None:
    live = Published()
    rec, _ = recorder(live=live)
    first = rec.finish("transferred", ended_by="agent", detail="desk")
    again = rec.finish("completed", ended_by="caller", detail="the caller hung up")
    assert again is first and again.outcome == "transferred" and again.outcome_detail == "desk"
    assert len(live.of("call_ended")) == 1


def test_save_spools_the_record_once(tmp_path: Path) -> None:
    spool = Spool(tmp_path / "spool")
    rec, _ = recorder()
    rec.caller_turn("hello")

    async def run() -> None:
        assert await rec.save(spool) is not None
        assert await rec.save(spool) is None  # once

    asyncio.run(run())
    (path,) = spool.pending()
    record = CallRecord.model_validate_json(path.read_text())
    # Never given an outcome (the job ended some other way): kept, as ended by the system.
    assert record.outcome == "completed" and record.ended_by == "system"
    assert record.turns[0].text == "hello"


def test_a_full_spool_costs_the_record_not_the_call(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool", max_bytes=10)
    rec, _ = recorder()

    async def run() -> None:
        assert await rec.save(spool) is None

    asyncio.run(run())
    assert spool.pending() == []
    assert "record not kept" in caplog.text and "full" in caplog.text
    with pytest.raises(SpoolFull):
        spool.put(rec.finish("completed"))


def test_a_caller_id_without_digits_is_kept_without_a_key() -> None:
    rec, _ = recorder()
    rec.line(RecordsConfig(), flow="f", called="+15550100", caller="anonymous")
    record = rec.finish("completed")
    assert record.caller == "anonymous" and record.caller_key is None


class FakeControl:
    """What supervisor_commands needs of CallControl."""

    def __init__(self) -> None:
        self.ended = False
        self.calls: list[tuple[str, ...]] = []
        self.flow = type("Flow", (), {"goodbye": "Goodbye."})()

    def resolve_target(self, name: str) -> str:
        if name != "desk":
            raise TransferRefused(f"{name!r} is not a transfer target")
        return "sip:desk@127.0.0.1"

    async def hang_up(self, reason: str, message: str | None = None) -> None:
        self.calls.append(("hang_up", reason, message or ""))
        self.ended = True

    async def transfer(self, reason: str, *, target: str | None = None) -> bool:
        self.calls.append(("transfer", reason, target or ""))
        return True


def test_supervisor_commands_end_transfer_and_refuse() -> None:
    async def run() -> None:
        rec, _ = recorder()
        control = FakeControl()
        handle = supervisor_commands(rec, control)  # type: ignore[arg-type]
        assert await handle({"action": "transfer", "target": "elsewhere", "by": "sam"}) == (
            False,
            "'elsewhere' is not a transfer target",
        )
        assert await handle({"action": "mute"}) == (False, "unknown action 'mute'")
        assert await handle({"action": "transfer", "target": "desk", "by": "sam"}) == (
            True,
            "transferring to desk",
        )
        assert await handle({"action": "end", "by": "sam"}) == (True, "ending the call")
        await asyncio.sleep(0)  # the actions run as tasks
        await asyncio.sleep(0)
        assert ("transfer", "a supervisor (sam) transferred the call", "desk") in control.calls
        assert ("hang_up", "ended by supervisor sam", "Goodbye.") in control.calls
        assert await handle({"action": "end"}) == (False, "the call is already ending")
        record = rec.finish("completed", ended_by="caller")
        assert record.ended_by == "supervisor" and record.outcome_detail == "ended by sam"
        kinds = [(e.kind, e.detail.get("action")) for e in record.events]
        assert kinds == [("supervisor", "transfer"), ("supervisor", "end")]

    asyncio.run(run())
