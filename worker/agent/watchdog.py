"""Someone watches the watcher: the worker's main process notices what its jobs cannot.

:class:`JobWatchdog`: a call's job process that dies (killed, crashed, OOM) leaves the caller
in a room with no agent; self-hosted LiveKit never re-dispatches it. The worker's process pool
reports every closed process; for one that ended abnormally while running a call whose room
still holds a caller, the watchdog dispatches the agent to that room again, with
``voicestack_recovery`` in the job metadata: the new job apologises with pre-rendered audio
and the call goes on. A room whose caller is gone needs nothing.

:class:`HelperWatch`: without its multiprocessing forkserver or resource tracker the worker
cannot start the next call's process, yet livekit-agents keeps reporting itself available;
the watch notices either one dying so that the worker can report unready and be restarted.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import multiprocessing.forkserver
import multiprocessing.resource_tracker
import os
import signal
import time
from pathlib import Path
from typing import TYPE_CHECKING, Any

from livekit import api

from worker.agent.fault_metrics import fault_metrics

if TYPE_CHECKING:
    from livekit.agents import AgentServer

__all__ = [
    "END_CALL_SIGNAL",
    "HelperWatch",
    "JobWatchdog",
    "end_live_calls",
    "redispatch_if_orphaned",
]

END_CALL_SIGNAL = signal.SIGUSR1
"""Sent by the worker's main process to a job process whose call must end now (the worker is
going away): the job plays the goodbye (or transfers) and hangs up (worker.agent.session)."""

log = logging.getLogger("voicestack.agent")


async def redispatch_if_orphaned(
    lk: api.LiveKitAPI, room: str, agent_name: str, *, reason: str
) -> bool:
    """Dispatch ``agent_name`` to ``room`` again if a caller (a non-agent participant) is
    still in it; True when a dispatch was created."""
    from worker.agent.job_context import RECOVERY_METADATA_KEY

    try:
        parts = await lk.room.list_participants(api.ListParticipantsRequest(room=room))
    except api.TwirpError as err:
        log.info("room %s is gone (%s): nothing to recover", room, err.message)
        return False
    callers = [p for p in parts.participants if p.kind != api.ParticipantInfo.Kind.AGENT]
    if not callers:
        return False
    await lk.agent_dispatch.create_dispatch(
        api.CreateAgentDispatchRequest(
            agent_name=agent_name,
            room=room,
            metadata=json.dumps({RECOVERY_METADATA_KEY: reason}),
        )
    )
    fault_metrics().redispatched.inc()
    log.warning("re-dispatched %s to room %s (%s)", agent_name, room, reason)
    return True


async def end_live_calls(server: AgentServer, watchdog: JobWatchdog, *, timeout_s: float) -> None:
    """Ask every job process that runs a call to end it (goodbye or transfer, then hang up),
    wait until they are done (at most ``timeout_s``), then delete the rooms of those calls
    that still exist: the worker is about to exit, its jobs cannot outlive it, and no caller
    may be left in a room nobody speaks in. ``watchdog`` stops re-dispatching first: these
    jobs end on purpose."""
    watchdog.stop()
    pool = getattr(server, "_proc_pool", None)
    procs = [p for p in (pool.processes if pool is not None else []) if p.running_job]
    rooms = [p.running_job.job.room.name for p in procs]
    for proc in procs:
        if proc.pid is not None:
            log.warning(
                "ending the call in job %s before the worker exits", proc.running_job.job.id
            )
            with contextlib.suppress(ProcessLookupError):
                os.kill(proc.pid, END_CALL_SIGNAL)
    deadline = time.monotonic() + timeout_s
    while procs and time.monotonic() < deadline:
        procs = [p for p in procs if p.exitcode is None and p.running_job]
        await asyncio.sleep(0.2)
    if not rooms:
        return
    async with api.LiveKitAPI() as lk:  # LIVEKIT_URL / _API_KEY / _API_SECRET
        for room in rooms:
            try:
                await lk.room.delete_room(api.DeleteRoomRequest(room=room))
                log.warning("room %s deleted: its call ended with the worker", room)
            except api.TwirpError as err:
                if err.code != api.TwirpErrorCode.NOT_FOUND:
                    log.error("could not delete room %s: %s", room, err.message)


class JobWatchdog:
    """Re-dispatches the agent to calls whose job process died (see the module doc)."""

    def __init__(self, agent_name: str) -> None:
        self._agent_name = agent_name
        self._tasks: set[asyncio.Task[None]] = set()
        self._attached = False
        self._stopped = False
        self.recovered: list[str] = []
        """Rooms this watchdog re-dispatched to (for logs and tests)."""

    def attach(self, server: AgentServer) -> None:
        """Listen to the server's process pool (it exists once the worker runs)."""
        if self._attached:
            return
        pool = getattr(server, "_proc_pool", None)
        if pool is None:
            log.error("livekit-agents has no process pool to watch: job deaths go unnoticed")
            return
        pool.on("process_closed", self._on_closed)
        self._attached = True

    def stop(self) -> None:
        """Re-dispatch nothing from now on (the worker is ending its calls itself)."""
        self._stopped = True

    def _on_closed(self, proc: Any) -> None:
        info = proc.running_job
        code = proc.exitcode
        if info is None or code == 0 or self._stopped:
            return  # an idle process, or a job that ended normally
        room = info.job.room.name
        log.error("job %s (room %s) process exited with code %s", info.job.id, room, code)
        task = asyncio.create_task(self._recover(room, code), name=f"recover-{room}")
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _recover(self, room: str, code: int | None) -> None:
        try:
            async with api.LiveKitAPI() as lk:  # LIVEKIT_URL / _API_KEY / _API_SECRET
                if await redispatch_if_orphaned(
                    lk, room, self._agent_name, reason=f"job process exited with code {code}"
                ):
                    self.recovered.append(room)
        except Exception:
            log.exception("could not recover room %s after its job died", room)

    async def aclose(self) -> None:
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)


def _alive(pid: int) -> bool:
    """True while ``pid`` runs (a zombie, waiting to be reaped, counts as dead)."""
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        except PermissionError:
            return True
        return True
    return stat.rsplit(")", 1)[1].split()[0] not in ("Z", "X")


class HelperWatch:
    """Notices the death of the worker's forkserver or resource tracker (module doc)."""

    def __init__(self, interval_s: float = 1.0) -> None:
        self._interval = interval_s
        self._pids: dict[str, int] = {}

    def snapshot(self) -> None:
        """Remember the helpers running now (call once the worker started its processes)."""
        fork_pid = getattr(multiprocessing.forkserver._forkserver, "_forkserver_pid", None)
        tracker_pid = getattr(multiprocessing.resource_tracker._resource_tracker, "_pid", None)
        for name, pid in (("forkserver", fork_pid), ("resource tracker", tracker_pid)):
            if isinstance(pid, int) and pid > 0:
                self._pids[name] = pid
        log.info("watching worker helper processes: %s", self._pids or "none running")

    async def wait_lost(self) -> str:
        """Return a description once a watched helper died (never returns otherwise)."""
        while True:
            await asyncio.sleep(self._interval)
            for name, pid in self._pids.items():
                if not _alive(pid):
                    return f"the worker's {name} (pid {pid}) died"
