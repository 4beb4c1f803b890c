"""CallControl with a fake job and session: a target outside the allowlist is never sent a
REFER, a failed REFER is explained to the caller and the call goes on, a transfer that worked
ends the job, a goodbye is played before the hang-up, a key interrupts the agent."""

from __future__ import annotations

import asyncio
import logging
from types import SimpleNamespace
from typing import Any

import pytest

from worker.agent.call_control import CallControl, dtmf_code
from worker.config.flows import FlowsConfig

FLOWS = FlowsConfig.model_validate(
    {
        "transfer_targets": {"desk": "sip:desk@10.0.0.5"},
        "flows": [
            {
                "name": "main",
                "default": True,
                "transfer": {"target": "desk", "key": "0"},
                "menu_prompt": "Press 1 for hours.",
                "menu": {"1": {"say": "We open at eight."}},
            }
        ],
    }
)


class Handle:
    async def wait_for_playout(self) -> None:
        await asyncio.sleep(0)


class FakeSession:
    def __init__(self) -> None:
        self.said: list[str] = []
        self.interrupts = 0
        self.agent_state = "listening"

    def say(self, text: str, allow_interruptions: bool = True) -> Handle:
        self.said.append(text)
        return Handle()

    def interrupt(self, *, force: bool = False) -> None:
        self.interrupts += 1


class FakeSip:
    def __init__(self, fail: Exception | None = None) -> None:
        self.requests: list[Any] = []
        self._fail = fail

    async def transfer_sip_participant(self, request: Any) -> None:
        self.requests.append(request)
        if self._fail is not None:
            raise self._fail


class FakeCtx:
    def __init__(self, sip: FakeSip) -> None:
        self.api = SimpleNamespace(sip=sip)
        self.room = SimpleNamespace(name="call-1")
        self.deleted = 0
        self.shutdowns: list[str] = []

    async def delete_room(self) -> None:
        self.deleted += 1

    def shutdown(self, reason: str = "") -> None:
        self.shutdowns.append(reason)


def _control(sip: FakeSip) -> tuple[CallControl, FakeCtx, FakeSession]:
    ctx, session = FakeCtx(sip), FakeSession()
    notes: list[str] = []

    async def note(text: str, digits: str = "") -> None:
        notes.append(text)

    control = CallControl(
        ctx,  # type: ignore[arg-type]
        session,  # type: ignore[arg-type]
        FLOWS,
        FLOWS.flows[0],
        call_id="call-1",
        caller=lambda: SimpleNamespace(identity="sip_caller"),  # type: ignore[arg-type,return-value]
        on_note=note,
        hang_up_tail_s=0.0,
    )
    return control, ctx, session


async def test_target_outside_the_allowlist_is_never_sent(caplog: pytest.LogCaptureFixture) -> None:
    sip = FakeSip()
    control, ctx, session = _control(sip)
    with caplog.at_level(logging.INFO, "voicestack.agent"):
        assert not await control.transfer("the model asked", target="sip:evil@6.6.6.6")
    assert sip.requests == [] and ctx.deleted == 0 and session.said == []
    assert "event transfer_refused target=sip:evil@6.6.6.6" in caplog.text


async def test_transfer_says_the_handover_then_refers_to_the_allowlisted_uri() -> None:
    sip = FakeSip()
    control, ctx, session = _control(sip)
    assert await control.transfer("asked")
    (req,) = sip.requests
    assert req.transfer_to == "sip:desk@10.0.0.5" and req.participant_identity == "sip_caller"
    assert session.said and "transferring you" in session.said[0]
    assert ctx.deleted == 1 and ctx.shutdowns and control.ended


async def test_failed_transfer_is_explained_and_the_call_goes_on(
    caplog: pytest.LogCaptureFixture,
) -> None:
    sip = FakeSip(fail=RuntimeError("call transfer failed: 486 Busy Here"))
    control, ctx, session = _control(sip)
    with caplog.at_level(logging.INFO, "voicestack.agent"):
        assert not await control.transfer("asked")
    assert session.said[-1].startswith("I'm sorry, I couldn't reach a colleague")
    assert ctx.deleted == 0 and not control.ended
    assert "event transfer_failed target=desk" in caplog.text
    # The call goes on: the keypad works again.
    control.on_dtmf("1")
    await asyncio.sleep(0.01)
    assert session.said[-1] == "We open at eight."


async def test_goodbye_is_played_before_the_room_goes() -> None:
    control, ctx, session = _control(FakeSip())
    assert control.intercept("Okay, that's all, goodbye.")
    for _ in range(5):
        await asyncio.sleep(0)
    assert session.said == [FLOWS.flows[0].goodbye] and ctx.deleted == 1
    assert control.intercept("anything after") is True  # the call is ending: no answer


async def test_key_interrupts_the_agent_and_plays_the_branch() -> None:
    control, _, session = _control(FakeSip())
    control.on_dtmf("1")
    await asyncio.sleep(0.01)
    assert session.interrupts == 1 and session.said == ["We open at eight."]
    await control.aclose()


def test_dtmf_codes() -> None:
    assert [dtmf_code(d) for d in "09*#"] == [0, 9, 10, 11]
    with pytest.raises(ValueError, match="not a DTMF digit"):
        dtmf_code("x")


async def test_keys_after_the_call_ended_are_ignored() -> None:
    control, ctx, session = _control(FakeSip())
    await control.hang_up("done", "Bye.")
    assert ctx.deleted == 1 and session.said == ["Bye."]
    control.on_dtmf("1")
    control.on_dtmf("0")
    await asyncio.sleep(0.01)
    assert session.said == ["Bye."] and ctx.deleted == 1 and session.interrupts == 0


async def test_keys_and_digits_are_masked_in_the_log_by_default(
    caplog: pytest.LogCaptureFixture,
) -> None:
    flows = FlowsConfig.model_validate(
        {
            "flows": [
                {
                    "name": "acct",
                    "default": True,
                    "menu_prompt": "Press 2.",
                    "menu": {"2": {"collect": "acct"}},
                    "collect": {
                        "acct": {
                            "prompt": "Type it.",
                            "label": "account",
                            "min_digits": 4,
                            "max_digits": 4,
                        }
                    },
                }
            ]
        }
    )
    notes: list[str] = []

    async def note(text: str, digits: str = "") -> None:
        notes.append(text)

    control = CallControl(
        FakeCtx(FakeSip()),  # type: ignore[arg-type]
        FakeSession(),  # type: ignore[arg-type]
        flows,
        flows.flows[0],
        call_id="call-2",
        caller=lambda: None,
        on_note=note,
        hang_up_tail_s=0.0,
    )
    with caplog.at_level(logging.INFO, "voicestack.agent"):
        for key in "29876":
            control.on_dtmf(key)
            await asyncio.sleep(0.01)
    assert notes == ["The caller entered their account on the keypad: 9876."]
    assert "9876" not in caplog.text and "digit=9" not in caplog.text
    assert "event digits_collected name=acct digits=<4 digits>" in caplog.text
    await control.aclose()
