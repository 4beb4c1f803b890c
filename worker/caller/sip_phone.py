"""A baresip phone on loopback for call-control tests: dial or answer, press keys, hang up, and
watch what happens to the call (established, transferred, closed by the far end, DTMF heard).

Where :class:`~worker.caller.sip.BaresipCaller` plays one scripted conversation, a
:class:`SipPhone` is driven step by step: the caller that presses 0 and gets transferred, the
human's desk phone that rings when it is, the customer an outbound call reaches. Every event
baresip reports on ``ctrl_tcp`` is kept in :attr:`SipPhone.events`, in order.
"""

from __future__ import annotations

import asyncio
import contextlib
from pathlib import Path
from typing import Any

from worker.caller.audio import Pcm
from worker.caller.sip import (
    BaresipError,
    Ctl,
    heard_in,
    start_baresip,
    stop_baresip,
    write_config,
)

__all__ = ["SipPhone"]

Event = dict[str, Any]


class SipPhone:
    """One baresip user agent (``sip:user@127.0.0.1:port``) driven over ``ctrl_tcp``."""

    def __init__(
        self,
        work: Path,
        *,
        user: str,
        wav: Path,
        auto_answer: bool = False,
        port: int | None = None,
    ) -> None:
        """``wav``: what the phone's microphone plays (8 kHz; baresip's aufile hangs up when
        it ends, so make it longer than the call). ``auto_answer``: pick up incoming calls.
        ``port``: the SIP port to listen on (default: a free one)."""
        self.work = work
        self.user = user
        self._wav = wav
        self._auto_answer = auto_answer
        self.events: list[Event] = []
        self._changed = asyncio.Condition()
        self._proc: asyncio.subprocess.Process | None = None
        self._ctl: Ctl | None = None
        self._reader: asyncio.Task[None] | None = None
        self._requested_port = port
        self.port = port or 0
        """The SIP port it listens on (known once started when none was requested)."""

    async def __aenter__(self) -> SipPhone:
        def configure() -> tuple[Path, int]:
            self.work.mkdir(parents=True, exist_ok=True)
            ctl_port, self.port = write_config(
                self.work,
                self._wav,
                user=self.user,
                auto_answer=self._auto_answer,
                sip_port=self._requested_port,
            )
            return self.work, ctl_port

        _, self._proc, self._ctl = await start_baresip(configure)
        self._reader = asyncio.create_task(self._read_events(), name=f"baresip-{self.user}")
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.aclose()

    async def aclose(self) -> None:
        """Quit baresip (ending any call) and stop reading its events."""
        if self._ctl is not None:
            with contextlib.suppress(OSError, RuntimeError):
                await self._ctl.send("quit")
            self._ctl.close()
            self._ctl = None
        if self._reader is not None:
            self._reader.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._reader
            self._reader = None
        await self._stop_process()

    # -- commands --------------------------------------------------------------------------------

    async def dial(self, target: str) -> None:
        """Place a call to ``target`` (a SIP URI)."""
        await self._send("dial", target)

    async def press(self, keys: str, gap_s: float = 0.3) -> None:
        """Press ``keys`` on the keypad, one at a time (RFC 4733 events on the call)."""
        for key in keys:
            await self._send("sndcode", key)
            await asyncio.sleep(gap_s)

    async def hang_up(self) -> None:
        """End the current call (BYE)."""
        await self._send("hangup")

    # -- observations ----------------------------------------------------------------------------

    async def wait_event(self, kind: str, limit_s: float, *, after: int = 0) -> Event:
        """The first event of type ``kind`` at index ``after`` or later of :attr:`events`,
        waiting up to ``limit_s``; ``TimeoutError`` names what was seen instead."""
        try:
            async with asyncio.timeout(limit_s), self._changed:
                while True:
                    for ev in self.events[after:]:
                        if ev.get("type") == kind:
                            return ev
                    await self._changed.wait()
        except TimeoutError:
            seen = [str(e.get("type")) for e in self.events[after:]]
            raise TimeoutError(
                f"{self.user}: no {kind} within {limit_s:g} s (saw {', '.join(seen) or 'nothing'})"
            ) from None

    def types(self) -> list[str]:
        """The types of every event so far, in order."""
        return [str(e.get("type")) for e in self.events]

    def heard(self, call: int = -1) -> Pcm:
        """What this phone heard so far in its ``call``-th call (default: the latest; 0: the
        first, e.g. the one that was transferred away), 8 kHz."""
        return heard_in(self.work, call)

    # -- internals -------------------------------------------------------------------------------

    async def _send(self, command: str, params: str = "") -> None:
        if self._ctl is None:
            raise BaresipError(f"{self.user}: the phone is not running")
        await self._ctl.send(command, params)

    async def _read_events(self) -> None:
        assert self._ctl is not None
        ctl = self._ctl
        while True:
            try:
                msg = await ctl.next_message()
            except (asyncio.IncompleteReadError, ConnectionError):
                return
            if not msg.get("event"):
                continue  # a command's response
            async with self._changed:
                self.events.append(msg)
                self._changed.notify_all()

    async def _stop_process(self) -> None:
        if self._proc is not None:
            await stop_baresip(self._proc, grace_s=3.0)
