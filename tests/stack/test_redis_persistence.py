"""Redis killed and restarted by the supervisor: the SIP trunks and dispatch rules that
``voicestack provision`` stored (LiveKit keeps them in Redis only) are still there.

Uses the session ``provisioned_stack`` fixture (real redis + livekit-server, + livekit-sip where
built, on loopback, the shipped telephony config provisioned). The stack is shared with other
tests, so the test hands it on working, whatever happens: every child healthy and every Redis
pub/sub channel subscribed again (livekit-sip asks livekit-server about trunks over psrpc on
Redis; the subscriptions come back a moment after Redis itself does).
"""

from __future__ import annotations

import asyncio
import os
import signal
import time
from typing import Any

import pytest
from livekit import api

from worker.config.telephony import TelephonyConfig
from worker.stack.loopback import LoopbackStack
from worker.stack.process import HealthCheck, probe
from worker.stack.supervisor import ChildState, ChildStatus
from worker.telephony.provision import ProvisionResult

pytestmark = pytest.mark.integration

RESTART_LIMIT_S = 60.0  # generous: two shared cores


def _api(stack: LoopbackStack) -> api.LiveKitAPI:
    return api.LiveKitAPI(stack.livekit_url, stack.api_key, stack.api_secret, failover=False)


async def _sip_objects(stack: LoopbackStack) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Inbound trunks and dispatch rules by ID, each serialized (deterministically)."""
    lk = _api(stack)
    try:
        trunks = (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items
        rules = (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items
    finally:
        await lk.aclose()
    return (
        {t.sip_trunk_id: t.SerializeToString(deterministic=True) for t in trunks},
        {r.sip_dispatch_rule_id: r.SerializeToString(deterministic=True) for r in rules},
    )


async def _sip_objects_when_reachable(
    stack: LoopbackStack, limit_s: float
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """``_sip_objects`` once livekit-server answers again (it reconnects to the new redis)."""
    deadline = time.monotonic() + limit_s
    while True:
        try:
            return await _sip_objects(stack)
        except Exception:
            if time.monotonic() >= deadline:
                raise
            await asyncio.sleep(0.5)


async def _room_names(stack: LoopbackStack) -> set[str]:
    lk = _api(stack)
    try:
        return {r.name for r in (await lk.room.list_rooms(api.ListRoomsRequest())).rooms if r.name}
    finally:
        await lk.aclose()


def _encode(args: tuple[str, ...]) -> bytes:
    out = [f"*{len(args)}\r\n".encode()]
    for arg in args:
        data = arg.encode()
        out.append(b"$%d\r\n%s\r\n" % (len(data), data))
    return b"".join(out)


async def _reply(reader: asyncio.StreamReader) -> Any:
    line = (await reader.readline()).rstrip(b"\r\n")
    kind, rest = line[:1], line[1:]
    if kind == b"-":
        raise RuntimeError(f"redis: {rest.decode()}")
    if kind in (b"+", b":"):
        return rest.decode()
    if kind == b"$":
        n = int(rest)
        return None if n < 0 else (await reader.readexactly(n + 2))[:-2].decode()
    if kind == b"*":
        return [await _reply(reader) for _ in range(int(rest))]
    raise RuntimeError(f"redis: unexpected reply {line!r}")


async def _pubsub_channels(stack: LoopbackStack) -> set[str]:
    """Channels with at least one subscriber (``PUBSUB CHANNELS``)."""
    host, port = stack.redis_address
    commands: list[tuple[str, ...]] = [("PUBSUB", "CHANNELS")]
    if stack.rendered.redis_password:
        commands.insert(0, ("AUTH", stack.rendered.redis_password))
    async with asyncio.timeout(5):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            writer.write(b"".join(_encode(c) for c in commands))
            await writer.drain()
            replies = [await _reply(reader) for _ in commands]
        finally:
            writer.close()
            await writer.wait_closed()
    return set(replies[-1])


def _children(stack: LoopbackStack) -> tuple[str, ...]:
    return ("redis", "livekit", "sip") if "sip" in stack.components else ("redis", "livekit")


def _healthy(statuses: list[ChildStatus], names: tuple[str, ...]) -> bool:
    by_name = {s.name: s for s in statuses}
    return all(by_name[n].state == ChildState.HEALTHY and by_name[n].pid for n in names)


async def _wait_stack_working(stack: LoopbackStack, channels: set[str]) -> None:
    """Every child healthy, and every pub/sub channel in ``channels`` subscribed again."""
    ok = await asyncio.to_thread(
        stack.supervisor.wait_for, lambda st: _healthy(st, _children(stack)), RESTART_LIMIT_S
    )
    assert ok, stack.supervisor.status()
    host, port = stack.redis_address
    assert await probe(HealthCheck("redis", host, port))
    deadline = time.monotonic() + RESTART_LIMIT_S
    while missing := channels - await _pubsub_channels(stack):
        assert time.monotonic() < deadline, f"not subscribed again: {sorted(missing)}"
        await asyncio.sleep(0.2)


async def test_trunks_and_dispatch_rules_survive_a_redis_crash(
    provisioned_stack: tuple[LoopbackStack, TelephonyConfig, ProvisionResult],
) -> None:
    stack, _cfg, result = provisioned_stack
    assert result.trunk_ids and result.rule_ids, result
    await _wait_stack_working(stack, set())
    trunks, rules = await _sip_objects(stack)
    # The psrpc channels of the services (by node and client ID) must come back; a room's
    # own channels go with the room, which may close meanwhile (other tests leave rooms).
    rooms = await _room_names(stack)
    channels = {c for c in await _pubsub_channels(stack) if not any(r in c for r in rooms)}
    assert any(c.startswith("IOInfo|") for c in channels), channels  # SIP's view of LiveKit
    assert set(result.trunk_ids.values()) <= set(trunks)
    assert set(result.rule_ids.values()) <= set(rules)

    old = stack.supervisor.child("redis")
    assert old.pid is not None
    try:
        os.kill(old.pid, signal.SIGKILL)
        restarted = await asyncio.to_thread(
            stack.supervisor.wait_for,
            lambda st: (
                any(
                    s.name == "redis" and s.restarts > old.restarts and s.pid not in (None, old.pid)
                    for s in st
                )
                and _healthy(st, _children(stack))
            ),
            RESTART_LIMIT_S,
        )
        assert restarted, stack.supervisor.status()
        assert stack.supervisor.child("redis").last_exit == -signal.SIGKILL

        trunks_after, rules_after = await _sip_objects_when_reachable(stack, RESTART_LIMIT_S)
    finally:
        # Shared session stack: whatever failed above, hand it on with redis up again.
        await _wait_stack_working(stack, channels)

    assert trunks_after == trunks  # every trunk, unchanged
    assert rules_after == rules  # every dispatch rule, unchanged
    assert set(result.trunk_ids.values()) <= set(trunks_after)
    assert set(result.rule_ids.values()) <= set(rules_after)
