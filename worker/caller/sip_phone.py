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
import shutil
import signal
from pathlib import Path
from typing import Any

import numpy as np

from worker.caller.audio import Pcm
from worker.caller.sip import BaresipError, Ctl, connect_ctl, read_growing_wav, write_config

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
        self.port = port or 0

    @property
    def uri(self) -> str:
        """Where other parties reach this phone."""
        return f"sip:{self.user}@127.0.0.1:{self.port}"

    async def __aenter__(self) -> SipPhone:
        exe = shutil.which("baresip")
        if exe is None:
            raise BaresipError("baresip is not installed (apt-get install baresip)")
        for attempt in range(3):
            self.work.mkdir(parents=True, exist_ok=True)
            ctl_port = write_config(
                self.work,
                self._wav,
                user=self.user,
                auto_answer=self._auto_answer,
                sip_port=self.port or None,
            )
            self.port = _account_port(self.work)
            log = (self.work / "baresip.log").open("wb")
            self._proc = await asyncio.create_subprocess_exec(
                exe,
                "-f",
                str(self.work),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
            log.close()
            try:
                self._ctl = await connect_ctl(ctl_port, self._proc)
                break
            except BaresipError:
                await self._stop_process()
                if attempt == 2:
                    raise
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
        # sndfile names its dumps by start time: name order is call order.
        dec = sorted((self.work / "rec").glob("*-dec.wav"))
        if not dec:
            return np.zeros(0, dtype=np.int16)
        return read_growing_wav(dec[call])

    def log_text(self) -> str:
        path = self.work / "baresip.log"
        return path.read_text(errors="replace") if path.is_file() else ""

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
        proc = self._proc
        if proc is None or proc.returncode is not None:
            return
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), 3)
        if proc.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                proc.send_signal(signal.SIGTERM)
            try:
                await asyncio.wait_for(proc.wait(), 5)
            except TimeoutError:
                proc.kill()
                await proc.wait()


def _account_port(work: Path) -> int:
    # write_config put the port in the account line: <sip:user@127.0.0.1:PORT>;...
    line = (work / "accounts").read_text().split(">")[0]
    return int(line.rsplit(":", 1)[1])
