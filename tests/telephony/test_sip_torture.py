"""Hostile SIP against the SIP edge and the real livekit-sip behind it while a real call is live:
RFC 4475-style torture messages and a seeded fuzz of INVITE headers and SDP over UDP, oversize
and half-sent messages over TCP, sent to each. Neither may crash or restart, and the live call
must go on (its keypad menu still answers, the caller hears the branch)."""

from __future__ import annotations

import asyncio
import socket
import time
from pathlib import Path

import psutil
import pytest
from lines_support import SUPPORT, LineStack, calling, heard_text, quiet_after, speech_after
from sip_torture import fuzzed_invites, torture_messages

from worker.caller.sip import SIP_SAMPLE_RATE

pytestmark = [pytest.mark.integration, pytest.mark.sip, pytest.mark.security]

FUZZ_COUNT = 300
RATE_PER_S = 200


def _sip_process(stack: LineStack) -> psutil.Process:
    config = str(stack.livekit.files.sip_config)
    for proc in psutil.process_iter(["cmdline"]):
        cmd = proc.info["cmdline"] or []
        if any("livekit-sip" in part for part in cmd[:1]) and config in cmd:
            return proc
    raise AssertionError(f"no livekit-sip process with {config}")


def _blast(host: str, port: int) -> dict[str, int]:
    """Send everything; returns how many messages went out per kind."""
    sent = {"udp_torture": 0, "udp_fuzz": 0, "tcp": 0}
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as udp:
        for payload in torture_messages(host, port).values():
            if len(payload) <= 65_000:
                udp.sendto(payload, (host, port))
                sent["udp_torture"] += 1
        for payload in fuzzed_invites(host, port, FUZZ_COUNT):
            udp.sendto(payload[:65_000], (host, port))
            sent["udp_fuzz"] += 1
            time.sleep(1 / RATE_PER_S)
    big = b"INVITE sip:x@y SIP/2.0\r\nX-Big: " + b"B" * 200_000 + b"\r\n\r\n"
    half = b"INVITE sip:x@y SIP/2.0\r\nVia: SIP/2.0/TCP 127.0.0.1;branch=z9hG4bKh\r\nContent-Le"
    for payload, hold_s in ((big, 0.0), (half, 2.0), (b"\x00" * 4096, 0.0)):
        try:
            with socket.create_connection((host, port), timeout=5) as tcp:
                tcp.sendall(payload)
                time.sleep(hold_s)  # a slow, never-finished message
            sent["tcp"] += 1
        except OSError:
            sent["tcp"] += 1  # refused or reset by the peer: also fine
    return sent


def test_hostile_sip_neither_crashes_livekit_sip_nor_disturbs_a_live_call(
    line_stack: LineStack, tmp_path: Path
) -> None:
    sip = _sip_process(line_stack)
    born = sip.create_time()
    # Both SIP listeners: the edge callers reach, and livekit-sip itself behind it (whatever
    # an allowed source sends reaches it).
    targets = [line_stack.sip_address, line_stack.livekit.livekit_sip_address]
    edge = line_stack.livekit.supervisor.child("sip-edge")

    async def run() -> dict[str, int]:
        async with calling(line_stack, SUPPORT, tmp_path, total_s=120.0) as call:
            phone = call.phone
            start = await speech_after(phone, 0.0, 20)
            await quiet_after(phone, start, 1.5, 30)  # greeting and menu prompt done
            sent: dict[str, int] = {}
            for target in targets:
                assert target is not None
                for kind, count in (await asyncio.to_thread(_blast, *target)).items():
                    sent[kind] = sent.get(kind, 0) + count
            await asyncio.sleep(1.0)
            assert "CALL_CLOSED" not in phone.types(), phone.types()
            pressed_at = len(phone.heard()) / SIP_SAMPLE_RATE
            await phone.press("1")
            end = await quiet_after(phone, pressed_at + 0.5, 1.5, 30)
            branch = await heard_text(line_stack, phone, pressed_at, end + 0.3)
            assert "monday" in branch and "friday" in branch, branch
            await phone.hang_up()
            await phone.wait_event("CALL_CLOSED", 10)
        return sent

    sent = asyncio.run(run())
    assert sent["udp_torture"] >= 50 and sent["udp_fuzz"] == 2 * FUZZ_COUNT and sent["tcp"] == 6
    after = line_stack.livekit.supervisor.child("sip-edge")
    assert after.pid == edge.pid and after.restarts == 0, "the SIP edge crashed or restarted"
    assert sip.is_running() and sip.create_time() == born, "livekit-sip crashed or restarted"
    assert sip.status() != psutil.STATUS_ZOMBIE
