"""Helpers for the end-to-end tests: place a scripted call, poll server state."""

from __future__ import annotations

import asyncio
from pathlib import Path
from typing import Any

from stack_queries import agent_rooms, capacity, wait_until

from worker.caller.demo import CallOutcome, place_scripted_call

__all__ = ["EgressWatch", "agent_rooms", "capacity", "place_call", "wait_until"]


def place_call(voice_stack: Any, transport: str, tmp_path: Path, **kw: Any) -> CallOutcome:
    lk = voice_stack.livekit
    number = "+15550100"  # the loopback profile's PBX_NUMBER on the shipped trunk
    if transport == "sip":
        from worker.telephony.provision import provision_loopback

        tel, _ = provision_loopback(lk)
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
