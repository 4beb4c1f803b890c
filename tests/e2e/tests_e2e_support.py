"""Helpers for the end-to-end tests: place a scripted call, poll server state."""

from __future__ import annotations

import asyncio
import json
import time
import urllib.request
from collections.abc import Callable
from pathlib import Path
from typing import Any

from livekit import api

from worker.caller.demo import CallOutcome, place_scripted_call


def wait_until(
    check: Callable[[], bool], *, limit_s: float, what: str, every_s: float = 0.25
) -> None:
    """Poll ``check`` until it is true; fail naming ``what`` after ``limit_s``."""
    deadline = time.monotonic() + limit_s
    last_error: Exception | None = None
    while time.monotonic() < deadline:
        try:
            if check():
                return
        except Exception as err:  # a transient API error is retried until the deadline
            last_error = err
        time.sleep(every_s)
    raise AssertionError(
        f"timed out after {limit_s}s waiting for: {what} (last error: {last_error})"
    )


def place_call(voice_stack: Any, transport: str, tmp_path: Path, **kw: Any) -> CallOutcome:
    lk = voice_stack.livekit
    number = "+15550100"  # the loopback profile's PBX_NUMBER on the shipped trunk
    if transport == "sip":
        from worker.config.telephony import load_telephony
        from worker.telephony.provision import provision

        env = {"PBX_AUTH_USERNAME": "", "PBX_AUTH_PASSWORD": "", **lk.rendered.env}
        tel = load_telephony(lk.rendered.telephony_path, env)
        asyncio.run(provision(tel, lk.livekit_url, lk.api_key, lk.api_secret))
        number = tel.trunks[0].numbers[0]
    return asyncio.run(
        place_scripted_call(
            transport=transport,
            ws_url=lk.ws_url,
            api_key=lk.api_key,
            api_secret=lk.api_secret,
            agent_name=voice_stack.agent_name,
            inference_url=voice_stack.inference_url,
            work_dir=tmp_path,
            sip_address=lk.sip_address,
            sip_number=number,
            greeting_wait_s=9.0,
            answer_wait_s=14.0,
            **kw,
        )
    )


def capacity(url: str) -> dict[str, Any]:
    with urllib.request.urlopen(url + "/v1/capacity", timeout=2) as resp:
        data: dict[str, Any] = json.loads(resp.read())
    return data


def agent_rooms(voice_stack: Any) -> list[str]:
    """Rooms in which an agent participant is still present."""
    lk = voice_stack.livekit

    async def query() -> list[str]:
        async with api.LiveKitAPI(lk.livekit_url, lk.api_key, lk.api_secret) as client:
            rooms = await client.room.list_rooms(api.ListRoomsRequest())
            busy = []
            for room in rooms.rooms:
                parts = await client.room.list_participants(
                    api.ListParticipantsRequest(room=room.name)
                )
                if any(p.kind == api.ParticipantInfo.Kind.AGENT for p in parts.participants):
                    busy.append(room.name)
            return busy

    return asyncio.run(query())


LOOPBACK = {"127.0.0.1", "::1", "::ffff:127.0.0.1"}


class EgressWatch:
    """Samples the sockets of a process tree while a call runs and keeps every remote address
    that is not loopback: the agent worker and its job processes must never reach out (LiveKit
    Cloud turn detection, hub downloads, public STUN)."""

    def __init__(self, pid: int, every_s: float = 0.2) -> None:
        import threading

        self._pid = pid
        self._every = every_s
        self.remote: set[str] = set()
        self.loopback_peers: set[int] = set()
        self.samples = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        import psutil

        while not self._stop.is_set():
            try:
                root = psutil.Process(self._pid)
                procs = [root, *root.children(recursive=True)]
            except psutil.Error:
                procs = []
            for proc in procs:
                try:
                    conns = proc.net_connections(kind="inet")
                except psutil.Error:
                    continue
                for conn in conns:
                    if not conn.raddr:
                        continue
                    if conn.raddr.ip in LOOPBACK:
                        self.loopback_peers.add(conn.raddr.port)
                    else:
                        self.remote.add(f"{proc.pid}->{conn.raddr.ip}:{conn.raddr.port}")
            self.samples += 1
            self._stop.wait(self._every)

    def __enter__(self) -> EgressWatch:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._thread.join(5)
