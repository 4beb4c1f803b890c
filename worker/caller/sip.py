"""SIP caller: baresip (a real SIP user agent we did not write) dials livekit-sip on loopback.

baresip runs headless from a generated config directory: ``aufile`` plays the caller WAV as the
microphone from call answer; ``sndfile`` dumps what is sent (``*-enc.wav``) and what is heard
(``*-dec.wav``); ``aubridge`` is a null speaker that keeps the receive path running without a
sound card; ``ctrl_tcp`` takes JSON commands (dial, hangup, quit) and reports call events.
Only G.711 u-law is offered (8 kHz), so the caller WAV is written at 8 kHz (aufile requires the
codec's rate).

Clock: the two dumps start with the audio stream and end at hang-up. The sent dump starts when
the WAV starts playing; the heard dump starts with the first RTP packet received, a little
later. Their length difference is that offset, which maps the utterance times (measured in the
sent dump itself, so they are what really left the caller) onto the heard recording's clock.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import shutil
import signal
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np

from worker.caller.analysis import speech_segments
from worker.caller.audio import Pcm, read_wav
from worker.caller.transport import CallRecording, HangUp
from worker.caller.utterances import CallerScript, ScheduledUtterance
from worker.stack.ports import free_port, free_udp_range, free_udp_tcp_port

__all__ = ["SIP_SAMPLE_RATE", "BaresipCaller", "BaresipError"]

logger = logging.getLogger("voicestack.caller")

SIP_SAMPLE_RATE = 8000
MODULES = "/usr/lib/baresip/modules"


class BaresipError(RuntimeError):
    """baresip is missing, did not start, or the call failed; the message says which."""


class BaresipCaller:
    """A scripted caller over SIP through baresip."""

    name = "sip"

    def __init__(
        self,
        *,
        sip_host: str,
        sip_port: int,
        number: str,
        work_dir: Path | None = None,
        answer_timeout_s: float = 30.0,
    ) -> None:
        self._target = f"sip:{number}@{sip_host}:{sip_port}"
        self._work_dir = work_dir
        self._answer_timeout_s = answer_timeout_s
        self.sent: Pcm | None = None
        self.rtp_sources: list[str] = []
        """Where baresip received RTP from (``ip:port``), read from its log after the call."""
        self._work: Path | None = None
        self.dialed_at: float | None = None
        """``time.monotonic()`` when the INVITE was sent, and when the call was answered."""
        self.answered_at: float | None = None

    def heard_so_far(self) -> Pcm:
        """What the caller heard so far in the call in progress (empty before it is
        answered); its length is the heard recording's clock, for marking when something
        happened during the call."""
        if self._work is None:
            return np.zeros(0, dtype=np.int16)
        return heard_in(self._work)

    async def call(self, script: CallerScript, *, hang_up: HangUp | None = None) -> CallRecording:
        if script.sample_rate != SIP_SAMPLE_RATE:
            raise ValueError(
                f"the SIP caller plays {SIP_SAMPLE_RATE} Hz WAVs (G.711); "
                f"the script is {script.sample_rate} Hz"
            )
        work, proc, ctl = await start_baresip(lambda: _prepare(self._work_dir, script.wav))
        self._work = work
        try:
            try:
                hung_up_early = await self._run_call(ctl, script, hang_up, work)
            finally:
                with contextlib.suppress(OSError):
                    await ctl.send("quit")
                ctl.close()
        finally:
            await stop_baresip(proc)
        return self._recording(work, script, hung_up_early)

    async def _run_call(
        self, ctl: Ctl, script: CallerScript, hang_up: HangUp | None, work: Path
    ) -> bool:
        self.dialed_at = time.monotonic()
        await ctl.send("dial", self._target)
        await ctl.wait_event("CALL_ESTABLISHED", self._answer_timeout_s, fail_on="CALL_CLOSED")
        self.answered_at = time.monotonic()
        logger.info("SIP call established with %s", self._target)
        if hang_up is None:
            # aufile ends the call itself at the end of the WAV ("end of file").
            await ctl.wait_event("CALL_CLOSED", script.duration_s + 15)
            return False
        utt = script.utterances[hang_up.turn - 1]
        onset = await _wait_heard_speech(work, after_s=utt.end_s, limit_s=script.duration_s + 5)
        if onset is None:
            raise BaresipError(f"no answer heard to utterance {hang_up.turn} to hang up on")
        await asyncio.sleep(hang_up.after_answer_s)
        await ctl.send("hangup")
        await ctl.wait_event("CALL_CLOSED", 10)
        return True

    def _recording(self, work: Path, script: CallerScript, hung_up_early: bool) -> CallRecording:
        dec = sorted((work / "rec").glob("*-dec.wav"))
        enc = sorted((work / "rec").glob("*-enc.wav"))
        if not dec or not enc:
            raise BaresipError(f"baresip wrote no call recording in {work / 'rec'}")
        self.rtp_sources = _rtp_sources(work / "baresip.log")
        heard, rate = read_wav(dec[-1])
        sent, _ = read_wav(enc[-1])
        self.sent = sent
        offset = max(0.0, (len(sent) - len(heard)) / rate)
        return CallRecording(
            samples=heard,
            sample_rate=rate,
            transport=self.name,
            schedule_offset_s=-offset,
            hung_up_early=hung_up_early,
            notes=[
                f"RTP received from {', '.join(self.rtp_sources) or 'nowhere'}",
                f"heard recording starts {offset * 1000:.0f} ms after the sent one "
                "(first RTP packet); utterance times shifted accordingly",
                f"baresip files in {work}",
            ],
        )

    def measured_schedule(self, script: CallerScript) -> tuple[ScheduledUtterance, ...]:
        """Utterance times as found in the sent dump (when they really left the caller), in
        the sent dump's clock; falls back to the script's schedule for one not found."""
        if self.sent is None:
            return script.utterances
        segs = speech_segments(self.sent, SIP_SAMPLE_RATE)
        out: list[ScheduledUtterance] = []
        for utt in script.utterances:
            near = [s for s in segs if abs(s.start_s - utt.start_s) < 0.5]
            if near:
                # Onset from the dump; the end keeps the utterance's exact length (the energy
                # VAD cuts quiet word endings a few tens of ms early).
                out.append(utt.shifted(near[0].start_s - utt.start_s))
            else:
                out.append(utt)
        return tuple(out)


def _prepare(work_dir: Path | None, wav: Path) -> tuple[Path, int]:
    if not Path(MODULES, "aufile.so").is_file():
        raise BaresipError(f"baresip modules not found in {MODULES}")
    work = Path(work_dir or tempfile.mkdtemp(prefix="baresip-"))
    work.mkdir(parents=True, exist_ok=True)
    ctl_port, _ = write_config(work, wav)
    return work, ctl_port


async def start_baresip(
    configure: Callable[[], tuple[Path, int]],
) -> tuple[Path, asyncio.subprocess.Process, Ctl]:
    """Start baresip headless and connect to its ``ctrl_tcp``. ``configure()`` writes a config
    on free ports and returns (its directory, the ctrl port); it is called again, up to three
    times, when another process took one of those ports meanwhile."""
    exe = shutil.which("baresip")
    if exe is None:
        raise BaresipError("baresip is not installed (apt-get install baresip)")
    for attempt in range(3):
        work, ctl_port = configure()
        with (work / "baresip.log").open("wb") as log:  # the child keeps its own descriptor
            proc = await asyncio.create_subprocess_exec(
                exe,
                "-f",
                str(work),
                stdin=asyncio.subprocess.DEVNULL,
                stdout=log,
                stderr=asyncio.subprocess.STDOUT,
                start_new_session=True,
            )
        try:
            return work, proc, await connect_ctl(ctl_port, proc)
        except BaresipError:
            await stop_baresip(proc, grace_s=0.0)
            if attempt == 2:
                raise
            logger.warning("baresip failed to start (ports taken?); retrying")
    raise AssertionError("unreachable")


async def stop_baresip(proc: asyncio.subprocess.Process, grace_s: float = 5.0) -> None:
    """Give baresip ``grace_s`` to exit by itself (after ``quit``), then SIGTERM, then kill."""
    if proc.returncode is None and grace_s > 0:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(proc.wait(), grace_s)
    if proc.returncode is None:
        with contextlib.suppress(ProcessLookupError):
            proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), 5)
        except TimeoutError:
            proc.kill()
            await proc.wait()


def write_config(
    work: Path,
    wav: Path,
    *,
    user: str = "caller",
    auto_answer: bool = False,
    sip_port: int | None = None,
) -> tuple[int, int]:
    """baresip config + account bound to loopback on free ports; returns the ctrl_tcp port and
    the SIP port.

    ``user``/``sip_port``: the account (``sip:user@127.0.0.1:sip_port``) other parties call;
    ``auto_answer``: answer incoming calls at once (a human's desk phone, an outbound callee).
    """
    # baresip binds its SIP port on UDP and TCP alike: the number must be free for both.
    sip_port = sip_port or free_udp_tcp_port()
    ctl_port = free_port("127.0.0.1")
    rec = work / "rec"
    rec.mkdir(exist_ok=True)
    for old in rec.glob("*.wav"):
        old.unlink()
    rtp_start, rtp_end = free_udp_range(4, "127.0.0.1")
    lines = [
        "poll_method\tepoll",
        # Without this baresip picks the default route's interface for SDP, and media would
        # leave loopback.
        "net_interface\t127.0.0.1",
        f"sip_listen\t127.0.0.1:{sip_port}",
        "sip_transports\tudp",
        "audio_player\taubridge,null",
        f"audio_source\taufile,{wav}",
        "audio_alert\taubridge,null",
        f"ausrc_srate\t{SIP_SAMPLE_RATE}",
        f"auplay_srate\t{SIP_SAMPLE_RATE}",
        f"rtp_ports\t{rtp_start}-{rtp_end}",
        # A desk phone on a LAN buffers 20-60 ms; baresip's default (5-10 frames, 100-200 ms)
        # would add its own delay to every voice-to-voice figure (docs/latency.md).
        "jitter_buffer_delay\t1-3",
        f"module_path\t{MODULES}",
        "module\tg711.so",
        "module\taufile.so",
        "module\taubridge.so",
        "module\tsndfile.so",
        "module_app\taccount.so",
        "module_app\tmenu.so",
        "module_app\tctrl_tcp.so",
        f"ctrl_tcp_listen\t127.0.0.1:{ctl_port}",
        f"snd_path\t{rec}",
    ]
    (work / "config").write_text("\n".join(lines) + "\n")
    answer = ";answermode=auto" if auto_answer else ""
    (work / "accounts").write_text(
        f"<sip:{user}@127.0.0.1:{sip_port}>;regint=0;audio_codecs=PCMU{answer}\n"
    )
    return ctl_port, sip_port


def _rtp_sources(log: Path) -> list[str]:
    text = log.read_text(errors="replace") if log.is_file() else ""
    return re.findall(r"incoming rtp for 'audio' established, receiving from (\S+)", text)


class Ctl:
    """baresip's ctrl_tcp: netstring-framed JSON commands and events."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._reader = reader
        self._writer = writer
        self.events: list[dict[str, object]] = []

    async def send(self, command: str, params: str = "") -> None:
        body = json.dumps({"command": command, "params": params, "token": command}).encode()
        self._writer.write(str(len(body)).encode() + b":" + body + b",")
        await self._writer.drain()

    async def next_message(self) -> dict[str, object]:
        size = await self._reader.readuntil(b":")
        body = await self._reader.readexactly(int(size[:-1]))
        await self._reader.readexactly(1)  # the trailing ","
        msg: dict[str, object] = json.loads(body)
        self.events.append(msg)
        return msg

    async def wait_event(self, kind: str, limit_s: float, *, fail_on: str = "") -> None:
        async with asyncio.timeout(limit_s):
            while True:
                msg = await self.next_message()
                if msg.get("type") == kind:
                    return
                if fail_on and msg.get("type") == fail_on:
                    raise BaresipError(f"call failed: {msg.get('param')}")

    def close(self) -> None:
        self._writer.close()


async def connect_ctl(port: int, proc: asyncio.subprocess.Process) -> Ctl:
    for _ in range(100):
        if proc.returncode is not None:
            raise BaresipError(f"baresip exited at start (status {proc.returncode})")
        try:
            reader, writer = await asyncio.open_connection("127.0.0.1", port)
            return Ctl(reader, writer)
        except OSError:
            await asyncio.sleep(0.1)
    raise BaresipError("baresip's ctrl_tcp did not open")


def heard_in(work: Path, call: int = -1) -> Pcm:
    """What a baresip in ``work`` heard so far in its ``call``-th call (default: the latest);
    sndfile names its dumps by start time, so name order is call order."""
    dec = sorted((work / "rec").glob("*-dec.wav"))
    return read_growing_wav(dec[call]) if dec else np.zeros(0, dtype=np.int16)


def read_growing_wav(path: Path) -> Pcm:
    """Samples written so far to a WAV file that is still being written (header not final)."""
    data = path.read_bytes()
    at = data.find(b"data")
    if at < 0:
        return np.zeros(0, dtype=np.int16)
    body = data[at + 8 :]
    return np.frombuffer(body[: len(body) // 2 * 2], dtype=np.int16)


async def _wait_heard_speech(work: Path, *, after_s: float, limit_s: float) -> float | None:
    """Poll the live heard-audio dump until speech starts after ``after_s``."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + limit_s
    while loop.time() < deadline:
        for seg in speech_segments(heard_in(work), SIP_SAMPLE_RATE):
            if seg.start_s >= after_s:
                return seg.start_s
        await asyncio.sleep(0.2)
    return None
