"""No dead air: one call's owner of what happens when its STT, LLM or TTS fails.

The session's plugins fail fast (stream deadlines, a heartbeat, no blind retries of LLM and
TTS), and every failure reaches :class:`CallGuard` as the session's ``error`` event. The guard
then, within one step of the event loop:

1. stops the half-made answer and plays the pre-rendered ``hold`` message (no inference
   server needed), then hold music, with ``still_holding`` every ``hold_repeat_s``;
2. polls the inference server's ``/readyz`` until it serves again (the supervisor restarts a
   dead or hung one) or ``recovery_timeout_s`` passes;
3. recovered: answers the caller's last unanswered words, or asks them to repeat; not
   recovered (or too many faults in this call): transfers the caller to ``transfer_to`` if
   configured, else plays ``goodbye`` and deletes the room (which hangs up the SIP leg).

Only one recovery runs at a time; errors during it are counted, not acted on twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import enum
import logging
import time
from collections.abc import Awaitable, Callable

from livekit.agents import AgentSession, AgentStateChangedEvent, ChatMessage, ErrorEvent

from worker.agent.announcements import Announcer
from worker.agent.fault_metrics import fault_metrics
from worker.agent.plugins._client import get_json
from worker.config.agent import FallbackConfig

__all__ = ["CallEnder", "CallGuard", "GuardState", "server_ready"]

log = logging.getLogger("voicestack.agent")

CallEnder = Callable[[str], Awaitable[None]]
"""Ends the call for the given reason (transfer or hang up); supplied by the job."""


ANSWER_WAIT_S = 8.0
"""After a recovery, hold music plays on until the answer starts, at most this long."""


class GuardState(enum.StrEnum):
    NORMAL = "normal"
    HOLDING = "holding"
    ENDING = "ending"


async def server_ready(url: str, *, timeout_s: float = 0.5) -> bool:
    """One ``GET /readyz`` of the inference server; False on any failure."""
    status, _ = await get_json(url, "/readyz", timeout_s=timeout_s)
    return status == 200


class CallGuard:
    """Watches one call's session for failures and keeps the caller hearing something."""

    def __init__(
        self,
        session: AgentSession,
        announcer: Announcer,
        cfg: FallbackConfig,
        *,
        inference_url: str,
        end_call: CallEnder,
        probe: Callable[[str], Awaitable[bool]] = server_ready,
        observer: Callable[[str, dict[str, object]], None] | None = None,
    ) -> None:
        """``observer(kind, detail)`` hears each ``fault`` and ``fallback`` (the call record)."""
        self._session = session
        self._announcer = announcer
        self._cfg = cfg
        self._url = inference_url
        self._end_call = end_call
        self._probe = probe
        self._observer = observer
        self.state = GuardState.NORMAL
        self.faults = 0
        self.log: list[str] = []
        """One line per fault and outcome (for the job log and tests)."""
        self._task: asyncio.Task[None] | None = None
        session.on("error", self._on_error)

    def _on_error(self, ev: ErrorEvent) -> None:
        err = getattr(ev.error, "error", ev.error)
        source = type(ev.source).__name__
        if self.state is not GuardState.NORMAL:
            log.info("%s failed again while %s: %s", source, self.state, err)
            return
        self.faults += 1
        fault_metrics().faults.labels(source=_plugin(ev.source)).inc()
        self.state = GuardState.HOLDING
        self.log.append(f"fault {self.faults}: {source}: {err}")
        self._observe("fault", source=source, error=str(err)[:300])
        self._observe("fallback", action="hold")
        log.warning(
            "call fault %d (%s): %s; the caller hears the hold message", self.faults, source, err
        )
        self._task = asyncio.create_task(self._recover(), name="call-guard-recover")

    async def end(self, reason: str, message: str = "goodbye") -> None:
        """Play ``message`` and end the call (used by the guard and by the job itself)."""
        if self.state is GuardState.ENDING:
            return
        self.state = GuardState.ENDING
        self.log.append(f"ending: {reason}")
        self._observe("fallback", action="end", reason=reason)
        outcome = "transferred" if self._cfg.transfer_to else "ended"
        fault_metrics().outcomes.labels(outcome=outcome).inc()
        with contextlib.suppress(RuntimeError):
            self._session.interrupt(force=True)
        if self._cfg.transfer_to:
            await self._announcer.play("transfer")
        else:
            await self._announcer.play(message)
        await self._end_call(reason)

    async def _recover(self) -> None:
        with contextlib.suppress(RuntimeError):  # nothing to interrupt / session closing
            self._session.interrupt(force=True)
        if self.faults > self._cfg.max_faults_per_call:
            await self.end(f"{self.faults} faults in this call")
            return
        hold = asyncio.create_task(self._hold())
        answering = False
        try:
            ready = await self._wait_ready(time.monotonic() + self._cfg.recovery_timeout_s)
            if ready:
                self.log.append("recovered")
                self._observe("fallback", action="recovered")
                fault_metrics().outcomes.labels(outcome="recovered").inc()
                log.info("inference server serves again: the call continues")
                self.state = GuardState.NORMAL
                if self._caller_unanswered():
                    # The hold music plays on until the answer is heard: no gap while the
                    # answer is generated.
                    answering = True
                    self._session.generate_reply()
                    await self._until_agent_speaks(ANSWER_WAIT_S)
        finally:
            hold.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await hold
        if not ready:
            await self.end(f"inference server not back within {self._cfg.recovery_timeout_s:g} s")
            return
        if not answering:
            await self._announcer.wait_idle()  # the hold message in flight ends first
            await self._announcer.play("resume")

    async def _until_agent_speaks(self, limit_s: float) -> None:
        if self._session.agent_state == "speaking":
            return
        speaking = asyncio.Event()

        def _on_state(ev: AgentStateChangedEvent) -> None:
            if ev.new_state == "speaking":
                speaking.set()

        self._session.on("agent_state_changed", _on_state)
        try:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(speaking.wait(), limit_s)
        finally:
            self._session.off("agent_state_changed", _on_state)

    def _observe(self, kind: str, **detail: object) -> None:
        if self._observer is not None:
            self._observer(kind, detail)

    async def _hold(self) -> None:
        """``hold`` at once, then hold music, and ``still_holding`` every ``hold_repeat_s``:
        never dead air. Cancelling stops the music at once; a spoken message, once started,
        is played whole."""
        await asyncio.shield(self._announcer.play("hold"))
        while True:
            until = time.monotonic() + self._cfg.hold_repeat_s
            while time.monotonic() < until:
                await self._announcer.play("hold_music")
            await asyncio.shield(self._announcer.play("still_holding"))

    async def _wait_ready(self, deadline: float) -> bool:
        # Two good answers in a row: a server that just restarted may still be settling.
        good = 0
        while time.monotonic() < deadline:
            good = good + 1 if await self._probe(self._url) else 0
            if good >= 2:
                return True
            await asyncio.sleep(0.25)
        return False

    def _caller_unanswered(self) -> bool:
        items = [i for i in self._session.history.items if isinstance(i, ChatMessage)]
        return bool(items) and items[-1].role == "user"

    async def aclose(self) -> None:
        if self._task is not None and not self._task.done():
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task


def _plugin(source: object) -> str:
    name = type(source).__name__.lower()
    return next((kind for kind in ("stt", "llm", "tts") if kind in name), "other")
