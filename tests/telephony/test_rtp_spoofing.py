"""RTP from a wrong source during a live call is not played into it.

A caller (baresip) is connected to the support line through the whole stack, media relayed by
rtpengine (the SIP edge's ``rtp-relay``). Two attackers send speech and a key press ("1", the
menu's opening hours) to the relay port the caller was given: one from the caller's own address
on another port, one from another address (baresip holds the caller's port on every address,
so that one cannot reuse it). The agent must hear
neither: no key, no caller turn. Then the same packets go straight to livekit-sip's own RTP
port, which checks no source: the agent hears the key and the words. That control proves the
attack packets are ones the agent would act on, and shows why livekit-sip's RTP ports must only
be reachable from the relay (docs/security.md).
"""

from __future__ import annotations

import asyncio
import re
import socket
from pathlib import Path

import pytest
from lines_support import SUPPORT, LineStack, calling, log_has, speech_after
from rtp_attack import call_legs, send_attack

from worker.caller.sip import SIP_SAMPLE_RATE
from worker.caller.utterances import speak_espeak

pytestmark = [pytest.mark.integration, pytest.mark.sip, pytest.mark.security]

SPOKEN = "What time do you open on Saturday?"
KEY = 1
HEARD_WITHIN_S = 15.0
"""Long enough for the agent to act on a key (at once) and transcribe words (end of speech
plus the turn detector's delay) on a loaded two-core box; silence for this long is 'not heard'."""


def _sip_rtp_ports(stack: LineStack) -> range:
    low, high = stack.livekit.rendered.env["SIP_RTP_PORT_RANGE"].split("-")
    return range(int(low), int(high) + 1)


def test_rtp_from_a_wrong_source_is_not_played(line_stack: LineStack, tmp_path: Path) -> None:
    speech = speak_espeak(SPOKEN, SIP_SAMPLE_RATE)
    control = line_stack.livekit.rendered.rtp_relay_control

    async def run() -> None:
        async with calling(line_stack, SUPPORT, tmp_path) as call:
            await speech_after(call.phone, 0.0, 20)  # the greeting: media flows both ways
            room = call.room()
            legs = call_legs(control)
            sip_ports = _sip_rtp_ports(line_stack)
            (agent,) = [leg for leg in legs if leg.endpoint[1] in sip_ports]
            (caller,) = [leg for leg in legs if leg.endpoint[1] not in sip_ports]
            caller_ip = caller.endpoint[0]

            mark = len(line_stack.agent_log())
            other_ip = "127.0.0.2" if caller_ip == "127.0.0.1" else "127.0.0.1"
            with (
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_port,
                socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as other_address,
            ):
                other_port.bind((caller_ip, 0))
                other_address.bind((other_ip, 0))
                sent = await asyncio.gather(
                    asyncio.to_thread(send_attack, other_port, caller.relay, speech, KEY),
                    asyncio.to_thread(send_attack, other_address, caller.relay, speech, KEY),
                )
            assert min(sent) > 100, sent
            await asyncio.sleep(HEARD_WITHIN_S)
            after = line_stack.agent_log()[mark:]
            assert not re.search(rf"call {room} event dtmf", after), after
            assert not re.search(rf"call {room}: caller turn:", after), after

            # Control: the same packets at livekit-sip's own port are played.
            with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as direct:
                direct.bind((other_ip, 0))
                await asyncio.to_thread(send_attack, direct, agent.endpoint, speech, KEY)
            # (the log shows the key redacted: records.redact has dtmf by default)
            await log_has(line_stack, rf"call {room} event dtmf digit=\[dtmf\]", HEARD_WITHIN_S)
            # The words arrive interleaved with the caller's own (silent) stream, which livekit-sip
            # decodes as one: the transcript is garbled, but a caller turn proves they were heard.
            turn = await log_has(line_stack, rf"call {room}: caller turn: (.+)", HEARD_WITHIN_S)
            assert turn.group(1).strip(), turn.group(0)

    asyncio.run(run())
