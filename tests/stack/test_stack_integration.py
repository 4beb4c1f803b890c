"""The real stack on loopback: health, idempotent provisioning, SIP admission, `voicestack up`.

Uses the session ``livekit_stack`` fixture (real redis + livekit-server + livekit-sip binaries
on free 127.0.0.1 ports, configs rendered from the shipped files). SIP tests need the
livekit-sip binary and are marked ``sip``.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import AsyncIterator
from pathlib import Path

import pytest
from livekit import api

from worker.config.telephony import TelephonyConfig, load_telephony
from worker.stack.loopback import LoopbackStack
from worker.stack.ports import free_port
from worker.stack.process import HealthCheck, probe
from worker.telephony.provision import ProvisionError, ProvisionResult, provision

pytestmark = pytest.mark.integration

TRUNK_NUMBER = "+15550100"  # the number the loopback profile gives the shipped trunk


def _telephony(stack: LoopbackStack) -> TelephonyConfig:
    return load_telephony(stack.rendered.telephony_path, stack.rendered.env)


def _api(stack: LoopbackStack) -> api.LiveKitAPI:
    return api.LiveKitAPI(stack.livekit_url, stack.api_key, stack.api_secret, failover=False)


async def _snapshot(stack: LoopbackStack) -> tuple[list[bytes], list[bytes]]:
    lk = _api(stack)
    try:
        trunks = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
        rules = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
    finally:
        await lk.aclose()
    return (
        sorted(t.SerializeToString(deterministic=True) for t in trunks),
        sorted(r.SerializeToString(deterministic=True) for r in rules),
    )


async def _room_names(stack: LoopbackStack) -> set[str]:
    lk = _api(stack)
    try:
        return {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms}
    finally:
        await lk.aclose()


async def _healthy_within(check: HealthCheck, limit_s: float = 15.0) -> bool:
    """A health check on a loaded 2-core CI box: one 2 s probe can time out while the server is
    fine (a CI run saw livekit-server miss one after the heavy security tests)."""
    loop = asyncio.get_running_loop()
    until = loop.time() + limit_s
    while loop.time() < until:
        if await probe(check):
            return True
        await asyncio.sleep(0.5)
    return False


async def test_core_services_are_healthy(livekit_stack: LoopbackStack) -> None:
    host, port = livekit_stack.redis_address
    assert await _healthy_within(HealthCheck("redis", host, port))
    livekit = HealthCheck("http", "127.0.0.1", livekit_stack.rendered.livekit_port)
    assert await _healthy_within(livekit)
    states = {s.name: s.state.value for s in livekit_stack.supervisor.status()}
    assert states["redis"] == "healthy" and states["livekit"] == "healthy"


@pytest.mark.sip
async def test_sip_is_healthy(sip_stack: LoopbackStack) -> None:
    check = HealthCheck(
        "http", "127.0.0.1", sip_stack.rendered.sip_health_port, ok_statuses=(200, 429)
    )
    assert await probe(check)
    assert sip_stack.supervisor.child("sip").state.value == "healthy"


async def test_provision_twice_changes_nothing_and_updates_in_place(
    provisioned_stack: tuple[LoopbackStack, TelephonyConfig, ProvisionResult],
) -> None:
    livekit_stack, cfg, first = provisioned_stack
    assert set(first.trunk_ids) == {"pbx-main"} and set(first.rule_ids) == {"pbx-main-to-agent"}
    args = (livekit_stack.livekit_url, livekit_stack.api_key, livekit_stack.api_secret)
    before = await _snapshot(livekit_stack)
    again = await provision(cfg, *args)
    assert not again.changed
    assert again.trunk_ids == first.trunk_ids and again.rule_ids == first.rule_ids
    assert sorted(again.unchanged) == ["dispatch rule pbx-main-to-agent", "trunk pbx-main"]
    assert await _snapshot(livekit_stack) == before  # identical trunk/rule set, same IDs

    # A changed trunk is replaced in place (same ID); its rule still points at it.
    longer = cfg.model_copy(
        update={"trunks": [cfg.trunks[0].model_copy(update={"ringing_timeout_s": 20.0})]}
    )
    changed = await provision(longer, *args)
    assert changed.updated == ["trunk pbx-main"] and not changed.created
    assert changed.trunk_ids == again.trunk_ids and changed.rule_ids == again.rule_ids
    # Digest credentials round-trip through LiveKit's list call, so they compare equal too.
    with_auth = cfg.model_copy(
        update={
            "trunks": [
                cfg.trunks[0].model_copy(
                    update={"auth_username": "pbx", "auth_password": "p4ss-" + "w" * 30}
                )
            ]
        }
    )
    assert (await provision(with_auth, *args)).updated == ["trunk pbx-main"]
    assert not (await provision(with_auth, *args)).changed
    restored = await provision(cfg, *args)
    assert restored.updated == ["trunk pbx-main"]
    trunks, rules = await _snapshot(livekit_stack)
    assert len(trunks) == 1 and len(rules) == 1


async def test_provision_reports_a_dead_server(livekit_stack: LoopbackStack) -> None:
    cfg = _telephony(livekit_stack)
    url = f"http://127.0.0.1:{free_port()}"  # nothing listens there
    with pytest.raises(ProvisionError, match=f"cannot reach LiveKit at {url}"):
        await provision(cfg, url, "APIkey", "s" * 40, timeout_s=3)


# -- SIP admission with sipp ----------------------------------------------------------------


def _sipp(
    stack: LoopbackStack, number: str, source_ip: str, seconds: int, trace: Path
) -> subprocess.Popen[bytes]:
    assert stack.sip_address is not None
    host, port = stack.sip_address
    return subprocess.Popen(
        [
            "sipp", "-sn", "uac", "-s", number, f"{host}:{port}",
            "-i", source_ip, "-p", str(free_port(source_ip, "udp")),
            # -recv_timeout, not -timeout: sipp 3.x ignores its global -timeout here.
            "-m", "1", "-recv_timeout", str(seconds * 1000), "-nostdin",
            "-trace_msg", "-message_file", str(trace),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip


def _responses(trace: Path) -> list[int]:
    """Status codes of the responses to the INVITE (the SIP edge answers a CANCEL with 200,
    which is not the call being answered)."""
    text = trace.read_text(errors="replace") if trace.exists() else ""
    found = re.findall(
        r"^SIP/2\.0 (\d{3})[^\n]*\n(?:(?!SIP/2\.0)[^\n]*\n)*?CSeq: \d+ (\w+)", text, flags=re.M
    )
    return [int(code) for code, method in found if method == "INVITE"]


def _call_id(trace: Path) -> str:
    match = re.search(r"^Call-ID: (\S+)", trace.read_text(errors="replace"), flags=re.M)
    assert match, "sipp sent no INVITE"
    return match.group(1)


@pytest.fixture
async def provisioned(sip_stack: LoopbackStack) -> LoopbackStack:
    cfg = _telephony(sip_stack)
    await provision(cfg, sip_stack.livekit_url, sip_stack.api_key, sip_stack.api_secret)
    return sip_stack


@pytest.mark.sip
@pytest.mark.parametrize(
    ("number", "source_ip", "why"),
    [
        ("+15559999", "127.0.0.1", "number on no trunk"),
        (TRUNK_NUMBER, "127.0.0.2", "source not in allowed_addresses (127.0.0.1/32)"),
    ],
)
async def test_unmatched_invite_is_rejected_and_creates_no_room(
    provisioned: LoopbackStack, tmp_path: Path, number: str, source_ip: str, why: str
) -> None:
    """An allowed source dialling an unknown number passes the SIP edge and livekit-sip drops
    the call; a source no trunk allows never gets past the edge (no reply at all)."""
    rooms_before = await _room_names(provisioned)
    trace = tmp_path / "sipp.log"
    proc = _sipp(provisioned, number, source_ip, 4, trace)
    try:
        await asyncio.to_thread(proc.wait, 30)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    codes = _responses(trace)
    assert not [c for c in codes if 200 <= c < 300], f"{why}: answered {codes}"
    # Rooms of earlier calls may time out meanwhile; none may be added.
    assert not await _room_names(provisioned) - rooms_before, why
    call_id = _call_id(trace)
    sip_log = (provisioned.run_dir / "sip.log").read_text(errors="replace")
    if source_ip != "127.0.0.1":
        assert codes == [], f"the edge answered a source no trunk allows: {codes}"
        assert call_id not in sip_log, "a source no trunk allows reached livekit-sip"
        return
    # livekit-sip v1.11.0 answers 100/180, then drops such a call silently ("flood").
    ended = [ln for ln in sip_log.splitlines() if call_id in ln and "Closing inbound call" in ln]
    assert ended and '"reason": "flood"' in ended[-1], why


@pytest.mark.sip
async def test_matching_invite_reaches_dispatch_and_creates_a_room(
    provisioned: LoopbackStack, tmp_path: Path
) -> None:
    rooms_before = await _room_names(provisioned)
    trace = tmp_path / "sipp.log"
    proc = _sipp(provisioned, TRUNK_NUMBER, "127.0.0.1", 20, trace)
    lk = _api(provisioned)
    try:
        new: set[str] = set()
        deadline = time.monotonic() + 15
        while not new and time.monotonic() < deadline:
            await asyncio.sleep(0.3)
            new = await _room_names(provisioned) - rooms_before
        assert len(new) == 1, f"no room created; sipp got {_responses(trace)}"
        room = new.pop()
        assert room.startswith("call-")
        participants = (
            await lk.room.list_participants(api.ListParticipantsRequest(room=room))
        ).participants
        attrs = participants[0].attributes
        assert attrs["sip.trunkPhoneNumber"] == TRUNK_NUMBER
        assert attrs["sip.callIDFull"] == _call_id(trace)
        dispatches = await lk.agent_dispatch.list_dispatch(room)
        assert [d.agent_name for d in dispatches] == [_telephony(provisioned).agent_name]
        assert 180 in _responses(trace)
        # Deleting the room hangs the ringing call up: the caller gets a final error response.
        await lk.room.delete_room(api.DeleteRoomRequest(room=room))
        await asyncio.to_thread(proc.wait, 15)
        assert [c for c in _responses(trace) if c >= 300], _responses(trace)
    finally:
        await lk.aclose()
        if proc.poll() is None:
            proc.kill()
        await asyncio.to_thread(proc.wait, 30)


@pytest.mark.sip
async def test_a_call_makes_no_public_stun_or_dns_lookup(
    provisioned: LoopbackStack, tmp_path: Path
) -> None:
    """Zero egress for STUN: while a call is set up (livekit-sip joins the room as a WebRTC
    participant and gets livekit-server's ICE servers) nobody asks DNS for a STUN host or
    sends a STUN packet off loopback. Without the local stun_servers entry livekit-server
    hands out Google's/Twilio's STUN servers; with use_external_ip it resolves
    global.stun.twilio.com and stun.l.google.com at start (both seen with this filter)."""
    capture = await asyncio.create_subprocess_exec(
        "tshark", "-i", "any", "-l", "-n",
        "-f", "port 53 or udp port 3478 or udp port 19302",
        "-Y", 'dns.qry.name contains "stun" or (stun and not ip.dst == 127.0.0.0/8)',
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.PIPE,
    )  # fmt: skip
    assert capture.stderr is not None and capture.stdout is not None
    try:
        await _read_until(capture.stderr, r"Capturing on", [], 30)
        trace = tmp_path / "sipp.log"
        proc = _sipp(provisioned, TRUNK_NUMBER, "127.0.0.1", 20, trace)
        try:
            rooms_before = await _room_names(provisioned)
            deadline = time.monotonic() + 15
            while time.monotonic() < deadline:
                await asyncio.sleep(0.3)
                if await _room_names(provisioned) - rooms_before:
                    break
            await asyncio.sleep(3)  # the SIP participant gathers its ICE candidates
        finally:
            proc.kill()
            await asyncio.to_thread(proc.wait, 30)
    finally:
        capture.terminate()
        out, _ = await capture.communicate()
    assert 180 in _responses(trace)
    assert out.decode(errors="replace").strip() == ""


# -- voicestack up -------------------------------------------------------------------------


def _alive(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except FileNotFoundError:
        return False
    return state != "Z"


async def _read_until(
    stream: asyncio.StreamReader, pattern: str, seen: list[str], limit: float
) -> re.Match[str]:
    deadline = time.monotonic() + limit
    while time.monotonic() < deadline:
        line = await asyncio.wait_for(stream.readline(), deadline - time.monotonic())
        if not line:
            break
        seen.append(line.decode(errors="replace").rstrip())
        match = re.search(pattern, seen[-1])
        if match:
            return match
    raise AssertionError(f"{pattern!r} not seen; output:\n" + "\n".join(seen))


@contextlib.asynccontextmanager
async def _voicestack_up(
    run_dir: Path,
) -> AsyncIterator[tuple[asyncio.subprocess.Process, asyncio.StreamReader]]:
    """``voicestack up`` (loopback profile, redis + livekit) as a child with its output piped;
    killed on the way out if the test left it running."""
    proc = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "worker.cli", "up", "--profile", "loopback",
        "--components", "redis,livekit", "--run-dir", str(run_dir),
        stdout=asyncio.subprocess.PIPE, stderr=asyncio.subprocess.STDOUT,
        env={**os.environ, "HF_HUB_OFFLINE": "1"},
    )  # fmt: skip
    assert proc.stdout is not None
    try:
        yield proc, proc.stdout
    finally:
        if proc.returncode is None:
            proc.kill()
            await proc.wait()


async def test_up_supervises_restarts_and_stops_cleanly(tmp_path: Path) -> None:
    seen: list[str] = []
    async with _voicestack_up(tmp_path / "run") as (proc, out):
        await _read_until(out, r"stack is up", seen, 60)
        redis_pid = int((await _read_until(out, r"redis +healthy +pid (\d+)", seen, 5))[1])
        lk_pid = int((await _read_until(out, r"livekit +healthy +pid (\d+)", seen, 5))[1])
        await _read_until(out, r"LiveKit API +http://127\.0\.0\.1:\d+", seen, 5)

        os.kill(lk_pid, signal.SIGKILL)
        await _read_until(out, r"livekit: exited with code -9 .* restarting in", seen, 10)
        new_pid = int((await _read_until(out, r"livekit: started pid (\d+)", seen, 10))[1])
        await _read_until(out, r"livekit: healthy", seen, 30)
        assert new_pid != lk_pid

        proc.send_signal(signal.SIGTERM)
        await _read_until(out, r"stopped; no child left running", seen, 30)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    stops = [ln for ln in seen if "stopping (signal" in ln]
    assert "livekit" in stops[0] and "redis" in stops[1]  # reverse order
    assert sum("stopped (exit code" in ln for ln in seen) == 2
    assert not any(_alive(p) for p in (redis_pid, lk_pid, new_pid))


async def test_up_interrupted_during_start_stops_everything(tmp_path: Path) -> None:
    seen: list[str] = []
    async with _voicestack_up(tmp_path / "run") as (proc, out):
        redis_pid = int((await _read_until(out, r"redis: started pid (\d+)", seen, 30))[1])
        proc.send_signal(signal.SIGINT)  # Ctrl-C while livekit is not started/healthy yet
        await _read_until(out, r"stopped; no child left running", seen, 30)
        assert await asyncio.wait_for(proc.wait(), 10) == 0
    started = [int(m[1]) for ln in seen if (m := re.search(r"started pid (\d+)", ln))]
    assert redis_pid in started
    # Stopped by the supervisor itself (not only by PR_SET_PDEATHSIG when `up` exited).
    names = {m[1] for ln in seen if (m := re.search(r"(\w+): started pid", ln))}
    assert all(any(f"{n}: stopped (exit code" in ln for ln in seen) for n in names), seen
    assert not any(_alive(p) for p in started)
