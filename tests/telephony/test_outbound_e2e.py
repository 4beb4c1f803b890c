"""Outbound calls over real SIP: ``voicestack call`` -> LiveKit -> livekit-sip -> the SIP edge
and the media relay -> a baresip callee on loopback; the agent greets whoever answers and can
key in digits (DTMF out).

Outcomes: answered (exit 0), busy (the callee rejects: exit 3), no answer (it rings past the
trunk's ringing timeout: exit 4), invalid number (the far end answers 404: exit 6).
"""

from __future__ import annotations

import asyncio
import re
import subprocess
import sys
from pathlib import Path

import pytest
from lines_support import LineStack, caller_wav
from rtp_attack import call_legs

from worker.caller.sip import SIP_SAMPLE_RATE
from worker.caller.sip_phone import SipPhone
from worker.caller.transcribe import transcribe_speech
from worker.stack.render import project_root
from worker.telephony.outbound import CallRequest, Outcome, place_call

pytestmark = [pytest.mark.integration, pytest.mark.sip]

CALLEE = "+15550150"


def _cli_call(stack: LineStack, *extra: str) -> subprocess.Popen[str]:
    lk = stack.livekit
    assert lk.files.credentials is not None
    return subprocess.Popen(
        [sys.executable, "-m", "worker.cli", "call", *extra, "--profile", "loopback",
         "--env-file", str(lk.files.credentials), "--telephony",
         str(stack.run_dir / "telephony.yaml")],
        cwd=project_root(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip


async def _finish(proc: subprocess.Popen[str], limit_s: float) -> tuple[int, str]:
    out, err = await asyncio.to_thread(proc.communicate, timeout=limit_s)
    return proc.returncode, out + err


def test_call_rings_a_local_phone_the_agent_greets_and_keys_digits(
    line_stack: LineStack, tmp_path: Path
) -> None:
    async def run() -> None:
        wav = caller_wav(tmp_path / "callee.wav", [])
        async with SipPhone(
            tmp_path / "callee", user=CALLEE, wav=wav, auto_answer=True,
            port=line_stack.callee_port,
        ) as callee:  # fmt: skip
            proc = _cli_call(
                line_stack, CALLEE, "--customer", "Alex", "--purpose", "your delivery",
                "--dtmf", "42#",
            )  # fmt: skip
            status, output = await _finish(proc, 60)
            assert status == 0, output
            answered = re.search(r"call: \+15550150: answered; room (out-\S+)", output)
            assert answered, output
            await callee.wait_event("CALL_ESTABLISHED", 10)
            # The call went through the edge, its media through the relay: the callee's leg is
            # pinned to the callee's own RTP address.
            legs = call_legs(line_stack.livekit.rendered.rtp_relay_control)
            sip_low, sip_high = line_stack.livekit.rendered.env["SIP_RTP_PORT_RANGE"].split("-")
            outside = [g for g in legs if not int(sip_low) <= g.endpoint[1] <= int(sip_high)]
            assert len(legs) == 2 and len(outside) == 1, legs
            # DTMF out: the agent keyed 4, 2, # into the call before greeting.
            keys: list[str] = []
            for _ in range(3):
                ev = await callee.wait_event(
                    "CALL_DTMF_START", 15, after=_after_last(callee, "CALL_DTMF_START", keys)
                )
                keys.append(str(ev.get("param")))
            assert keys == ["4", "2", "#"], keys
            # The greeting names the customer and the purpose.
            loop = asyncio.get_running_loop()
            until = loop.time() + 25
            said = ""
            while loop.time() < until and not ("alex" in said and "delivery" in said):
                await asyncio.sleep(2.0)
                said = (
                    await transcribe_speech(
                        callee.heard(), SIP_SAMPLE_RATE, inference_url=line_stack.inference_url
                    )
                ).lower()
            assert "alex" in said and "delivery" in said, said
            await callee.hang_up()
            # The record: an outbound call to the callee's number, hung up by the callee; the
            # keys the agent sent are events.
            record = await line_stack.record(answered.group(1).rstrip(";,."))
            assert record.direction == "outbound" and record.called == CALLEE, record
            assert record.outcome == "completed" and record.ended_by == "caller", record
            assert record.caller is not None and record.caller.endswith(CALLEE[-4:]), record
            assert record.caller_key is not None
            assert [e.kind for e in record.events].count("dtmf_sent") == 1, record.events
            assert any(t.role == "agent" for t in record.turns), record.turns

    asyncio.run(run())


def _after_last(phone: SipPhone, kind: str, seen: list[str]) -> int:
    """Index just after the ``len(seen)``-th event of ``kind`` (0 when none was seen yet)."""
    found = [i for i, t in enumerate(phone.types()) if t == kind]
    return found[len(seen) - 1] + 1 if seen else 0


@pytest.mark.parametrize(
    ("behaviour", "outcome"),
    [("reject", Outcome.BUSY), ("ring", Outcome.NO_ANSWER), ("wrong", Outcome.INVALID_NUMBER)],
)
def test_unanswered_calls_report_their_outcome(
    line_stack: LineStack, tmp_path: Path, behaviour: str, outcome: Outcome
) -> None:
    lk = line_stack.livekit

    async def run() -> tuple[Outcome, int | None, str]:
        request = CallRequest(number=CALLEE, purpose="a test")
        dial = place_call(
            line_stack.telephony, request, url=lk.livekit_url, api_key=lk.api_key,
            api_secret=lk.api_secret,
        )  # fmt: skip
        wav = caller_wav(tmp_path / "callee.wav", [])
        # "wrong": the phone behind the trunk is someone else's: the far end answers 404.
        user = "+15550999" if behaviour == "wrong" else CALLEE
        async with SipPhone(
            tmp_path / "callee", user=user, wav=wav, port=line_stack.callee_port
        ) as callee:
            task = asyncio.create_task(dial)
            if behaviour != "wrong":
                await callee.wait_event("CALL_INCOMING", 15)
            if behaviour == "reject":
                await callee.hang_up()  # declines the ringing call
            result = await task
        return result.outcome, result.sip_status, result.detail

    got, status, detail = asyncio.run(run())
    assert got is outcome, (got, status, detail)
    assert outcome.exit_code == {"busy": 3, "no_answer": 4, "invalid_number": 6}[outcome.value]


def test_outbound_trunks_are_provisioned_idempotently(line_stack: LineStack) -> None:
    from worker.config.telephony import TelephonyConfig
    from worker.telephony.provision import ProvisionResult, provision

    lk = line_stack.livekit

    def apply(cfg: TelephonyConfig) -> ProvisionResult:
        return asyncio.run(
            provision(
                cfg, lk.livekit_url, lk.api_key, lk.api_secret, edge=lk.rendered.sip_edge_target
            )
        )

    again = apply(line_stack.telephony)
    assert "outbound trunk lines-out" in again.unchanged and not again.changed
    trunk_id = again.outbound_ids["lines-out"]
    moved = line_stack.telephony.outbound_trunks[0].model_copy(update={"address": "127.0.0.1:5999"})
    changed = apply(line_stack.telephony.model_copy(update={"outbound_trunks": [moved]}))
    assert changed.updated == ["outbound trunk lines-out"]
    assert changed.outbound_ids["lines-out"] == trunk_id  # replaced in place, same ID
    restored = apply(line_stack.telephony)
    assert restored.updated == ["outbound trunk lines-out"]
