"""Call control over real SIP: baresip callers -> livekit-sip -> livekit-server -> the agent
(real inference server, bundled models); a second baresip UA is the human's desk phone.

Each test asserts what the caller's phone saw (SIP events, the audio it heard, transcribed by
our STT) and the agent's call events (``call <room> event <kind> ...`` in its log).
"""

from __future__ import annotations

import asyncio
from pathlib import Path

import pytest
from lines_support import (
    CLOSED,
    CLOSED_MESSAGE,
    SALES,
    SALES_GREETING,
    SUPPORT,
    LineStack,
    caller_wav,
    calling,
    heard_text,
    log_has,
    quiet_after,
    speech_after,
)
from stack_queries import room_names, wait_until

from worker.caller.sip import SIP_SAMPLE_RATE
from worker.caller.sip_phone import SipPhone
from worker.caller.transcribe import transcribe_speech

pytestmark = [pytest.mark.integration, pytest.mark.sip]


def test_keypad_menu_branch_barge_in_and_order_number(
    line_stack: LineStack, tmp_path: Path
) -> None:
    async def run() -> None:
        async with calling(line_stack, SUPPORT, tmp_path) as call:
            phone = call.phone
            greeting = await speech_after(phone, 0.0, 20)
            room = call.room()
            # This number's line, with its own greeting (the sales line has another).
            await log_has(line_stack, rf"call {room} event line flow=support called=\+15550100", 5)
            first = await heard_text(line_stack, phone, 0.0, greeting + 2.0)
            assert "support" in first, first
            # The menu prompt plays after the greeting: press 1 in the middle of it.
            await asyncio.sleep(3.0)
            pressed_at = len(phone.heard()) / SIP_SAMPLE_RATE
            await phone.press("1")
            await log_has(line_stack, rf"call {room} event barge_in by=key", 10)
            end = await quiet_after(phone, pressed_at + 0.5, 1.5, 30)
            branch = await heard_text(line_stack, phone, pressed_at + 0.3, end + 0.3)
            assert "monday" in branch and "friday" in branch, branch

            # Option 2: the order number, typed; it reaches the conversation.
            asked_at = len(phone.heard()) / SIP_SAMPLE_RATE
            await phone.press("2")
            prompt_end = await quiet_after(phone, asked_at + 0.3, 1.0, 20)
            prompt = await heard_text(line_stack, phone, asked_at, prompt_end + 0.3)
            # (its last word may come after a pause: the first TTS chunk ends at "order")
            assert "type your" in prompt and "order" in prompt, prompt
            await phone.press("123456")
            # Typed digits are personal data: the log shows them redacted (records.redact).
            await log_has(
                line_stack, rf"call {room} event digits_collected name=order digits=\[dtmf\]", 15
            )
            await log_has(
                line_stack,
                rf"call {room}: context note: The caller entered their order number on the "
                r"keypad: \[dtmf\]\.",
                5,
            )
            await phone.hang_up()
            await phone.wait_event("CALL_CLOSED", 10)

            # The call's record: line, outcome, turns with timings, the keys, all redacted.
            record = await line_stack.record(room)
            assert record.flow == "support" and record.called == SUPPORT
            assert record.direction == "inbound" and record.outcome == "completed"
            assert record.ended_by == "caller" and record.ended_at is not None
            agent_said = " ".join(t.text for t in record.turns if t.role == "agent").lower()
            assert "northwind support" in agent_said, agent_said
            kinds = [e.kind for e in record.events]
            assert "barge_in" in kinds and "digits_collected" in kinds, kinds
            collected = next(e for e in record.events if e.kind == "digits_collected")
            assert collected.detail["digits"] == "[dtmf]", collected
            assert all(e.detail.get("digit") == "[dtmf]" for e in record.events if e.kind == "dtmf")
            assert "123456" not in record.model_dump_json()
            assert "123456" not in line_stack.agent_log()
        assert greeting < 10

    asyncio.run(run())


def test_key_0_transfers_to_the_allowlisted_desk_phone(
    line_stack: LineStack, tmp_path: Path
) -> None:
    async def run() -> None:
        silence = caller_wav(tmp_path / "silence.wav", [])
        async with (
            SipPhone(
                tmp_path / "human",
                user="frontdesk",
                wav=silence,
                auto_answer=True,
                port=line_stack.human_port,
            ) as human,
            calling(line_stack, SUPPORT, tmp_path) as call,
        ):
            caller = call.phone
            await speech_after(caller, 0.0, 20)
            room = call.room()
            await caller.press("0")
            await log_has(line_stack, rf"call {room} event transfer_requested by=key key=0", 10)
            await log_has(line_stack, rf"call {room} event transfer_started target=desk", 20)
            # The REFER reached the caller's phone, which called the desk phone: it picked up
            # (auto answer), and the call between caller and human is up.
            answered = await human.wait_event("CALL_ESTABLISHED", 20)
            assert "caller" in str(answered.get("peeruri")), answered
            await log_has(line_stack, rf"call {room} event transferred target=desk", 20)
            # The agent's leg is gone: the caller's first call was closed.
            await caller.wait_event("CALL_CLOSED", 15)
            # The handover line was said before the REFER.
            first_call = caller.heard(call=0)
            heard = (
                await transcribe_speech(
                    first_call, SIP_SAMPLE_RATE, inference_url=line_stack.inference_url
                )
            ).lower()
            assert "transferring" in heard or "colleague" in heard, heard

    asyncio.run(run())


def test_asking_for_a_person_when_the_transfer_fails_is_explained(
    line_stack: LineStack, tmp_path: Path
) -> None:
    async def run() -> None:
        said = [(7.0, "Can I talk to a person, please?")]
        async with calling(line_stack, SALES, tmp_path, said) as call:
            phone = call.phone
            start = await speech_after(phone, 0.0, 20)
            room = call.room()
            await log_has(line_stack, rf"call {room} event line flow=sales called=\+15550102", 5)
            greeting_end = await quiet_after(phone, start, 1.0, 20)
            greeting = await heard_text(line_stack, phone, 0.0, greeting_end + 0.3)
            # Only this line's greeting asks "What can I do for you?"; Whisper tiny hears
            # "Sales" as "cells" now and then.
            assert "sales" in greeting or "what can i do for you" in greeting, (
                greeting,
                SALES_GREETING,
            )
            await log_has(line_stack, rf"call {room} event transfer_requested by=speech", 30)
            failed = await log_has(
                line_stack, rf"call {room} event transfer_failed target=nowhere", 40
            )
            assert failed
            # The caller hears why, and the call goes on (not hung up).
            at = len(phone.heard()) / SIP_SAMPLE_RATE
            end = await quiet_after(phone, at - 1.0, 1.5, 30)
            told = await heard_text(line_stack, phone, at - 1.0, end + 0.3)
            assert "sorry" in told or "couldn't" in told or "reach" in told, told
            assert "CALL_CLOSED" not in phone.types()
            await phone.hang_up()

    asyncio.run(run())


def test_goodbye_hangs_up_after_the_last_words(line_stack: LineStack, tmp_path: Path) -> None:
    async def run() -> str:
        async with calling(line_stack, SALES, tmp_path, [(9.0, "Okay, bye bye.")]) as call:
            phone = call.phone
            await speech_after(phone, 0.0, 20)
            room = call.room()
            await log_has(line_stack, rf"call {room} event goodbye by=caller", 40)
            closed = await phone.wait_event("CALL_CLOSED", 30)  # the agent's BYE
            heard = phone.heard()
        said = await transcribe_speech(
            heard[int(11 * SIP_SAMPLE_RATE) :],
            SIP_SAMPLE_RATE,
            inference_url=line_stack.inference_url,
        )
        # The flow's goodbye line ("Thank you for calling. Goodbye."), not a model answer;
        # Whisper tiny at 8 kHz sometimes drops its short last word.
        assert "bye" in said.lower() or "for calling" in said.lower(), said
        assert closed
        await log_has(line_stack, rf"call {room} event hang_up reason=the_caller_said_goodbye", 5)
        return room

    room = asyncio.run(run())
    wait_until(
        lambda: room not in room_names(line_stack.livekit), limit_s=10, what=f"room {room} gone"
    )


def test_after_hours_line_plays_the_closed_message_and_hangs_up(
    line_stack: LineStack, tmp_path: Path
) -> None:
    async def run() -> None:
        async with calling(line_stack, CLOSED, tmp_path) as call:
            await call.phone.wait_event("CALL_CLOSED", 40)
            heard = call.phone.heard()
        room = call.room()
        await log_has(line_stack, rf"call {room} event closed action=hang_up", 5)
        said = await transcribe_speech(
            heard, SIP_SAMPLE_RATE, inference_url=line_stack.inference_url
        )
        assert "close" in said.lower() and "tomorrow" in said.lower(), (said, CLOSED_MESSAGE)

    asyncio.run(run())
