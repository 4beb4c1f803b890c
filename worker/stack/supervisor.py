"""Start, watch, restart and stop the stack's child processes.

``async with Supervisor(specs, run_dir) as sup:`` starts the children in order, each only after
the previous one's health check passed; a child that dies is restarted with exponential
backoff (and a log line saying so); leaving the block stops them in reverse order. Every child
runs in its own process group and shutdown signals the whole group, so a child that forked
leaves nothing behind. :class:`BackgroundSupervisor` runs the same thing on a private event
loop in a thread, for synchronous callers such as pytest session fixtures.
"""

from __future__ import annotations

import asyncio
import contextlib
import ctypes
import enum
import logging
import os
import signal
import threading
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import IO, Any

from worker.stack.process import ProcessSpec, SpecError, preflight, probe

__all__ = [
    "BackgroundSupervisor",
    "ChildState",
    "ChildStatus",
    "StartError",
    "Supervisor",
]

log = logging.getLogger("voicestack.stack")


class StartError(RuntimeError):
    """The stack could not be started; everything already started has been stopped again."""


class ChildState(enum.StrEnum):
    STARTING = "starting"
    HEALTHY = "healthy"
    BACKOFF = "backoff"  # crashed, waiting to be restarted
    STOPPING = "stopping"
    STOPPED = "stopped"


@dataclass(frozen=True)
class ChildStatus:
    """A snapshot of one child for status output and tests."""

    name: str
    state: ChildState
    pid: int | None
    restarts: int
    last_exit: int | None
    log_path: Path


# Loaded once in the parent: the forked child must not dlopen anything before exec.
_LIBC = ctypes.CDLL(None, use_errno=True)
_PR_SET_PDEATHSIG = 1


def _set_parent_death_signal() -> None:
    # Runs in the child between fork and exec (Linux): if the supervisor itself is killed
    # with SIGKILL and cannot clean up, the kernel still kills its direct children.
    _LIBC.prctl(_PR_SET_PDEATHSIG, signal.SIGKILL)


class _Child:
    def __init__(self, spec: ProcessSpec, run_dir: Path) -> None:
        self.spec = spec
        self.log_path = spec.log_path or run_dir / f"{spec.name}.log"
        self.proc: asyncio.subprocess.Process | None = None
        self.log_file: IO[bytes] | None = None
        self.state = ChildState.STOPPED
        self.restarts = 0
        self.last_exit: int | None = None
        self.started_at = 0.0
        self.monitor: asyncio.Task[None] | None = None
        self.liveness: asyncio.Task[None] | None = None

    def status(self) -> ChildStatus:
        alive = self.proc is not None and self.proc.returncode is None
        return ChildStatus(
            name=self.spec.name,
            state=self.state,
            pid=self.proc.pid if alive and self.proc is not None else None,
            restarts=self.restarts,
            last_exit=self.last_exit,
            log_path=self.log_path,
        )

    def log_line(self, text: str) -> None:
        if self.log_file is not None:
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            self.log_file.write(f"=== voicestack {stamp}: {text} ===\n".encode())
            self.log_file.flush()

    def signal_group(self, sig: int) -> None:
        """Send ``sig`` to the child's process group (pgid == pid: it called setsid)."""
        if self.proc is None:
            return
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(self.proc.pid, sig)


class Supervisor:
    """Async supervisor of an ordered list of :class:`ProcessSpec`.

    ``on_event`` (optional) receives every human-readable event line (start, healthy, crash,
    restart, stop) in addition to the ``voicestack.stack`` logger.
    """

    def __init__(
        self,
        specs: Sequence[ProcessSpec],
        run_dir: Path,
        *,
        backoff_initial_s: float = 0.5,
        backoff_max_s: float = 30.0,
        stable_after_s: float = 30.0,
        on_event: Callable[[str], None] | None = None,
    ) -> None:
        self.run_dir = Path(run_dir)
        self._children = [_Child(spec, self.run_dir) for spec in specs]
        self._backoff_initial = backoff_initial_s
        self._backoff_max = backoff_max_s
        self._stable_after = stable_after_s
        self._on_event = on_event
        self._closing = False
        # Notified on every state change; wait_for() waits on it.
        self._changed = asyncio.Condition()

    # -- public API ----------------------------------------------------------------------
    async def __aenter__(self) -> Supervisor:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.aclose()

    def status(self) -> list[ChildStatus]:
        """Snapshot of every child, in start order."""
        return [c.status() for c in self._children]

    def child(self, name: str) -> ChildStatus:
        """Snapshot of the child called ``name``."""
        for c in self._children:
            if c.spec.name == name:
                return c.status()
        raise KeyError(name)

    async def start(self) -> None:
        """Pre-flight every spec, then start children in order, each after the previous is
        healthy. Raises :class:`StartError` (after stopping what was started) on failure."""
        problems = preflight([c.spec for c in self._children])
        if problems:
            raise StartError("refusing to start:\n  - " + "\n  - ".join(problems))
        self.run_dir.mkdir(parents=True, exist_ok=True)
        try:
            for child in self._children:
                await self._spawn(child)
                if not await self._wait_healthy(child):
                    raise StartError(self._start_failure(child))
        except BaseException:
            await self.aclose()
            raise
        for child in self._children:
            child.monitor = asyncio.create_task(
                self._monitor(child), name=f"watch-{child.spec.name}"
            )
            if child.spec.health is not None and child.spec.liveness_failures > 0:
                child.liveness = asyncio.create_task(
                    self._probe_liveness(child), name=f"liveness-{child.spec.name}"
                )

    async def wait_for(
        self, predicate: Callable[[list[ChildStatus]], bool], limit_s: float
    ) -> bool:
        """Wait until ``predicate(status())`` holds (e.g. a restart happened); False on timeout."""
        try:
            async with asyncio.timeout(limit_s), self._changed:
                await self._changed.wait_for(lambda: predicate(self.status()))
        except TimeoutError:
            return False
        return True

    async def aclose(self) -> None:
        """Stop every child in reverse start order; idempotent; never leaves a process group."""
        self._closing = True
        monitors = [
            task for c in self._children for task in (c.monitor, c.liveness) if task is not None
        ]
        for task in monitors:
            task.cancel()
        if monitors:
            # asyncio.wait does not re-raise the monitors' CancelledError, while a
            # cancellation of aclose() itself still propagates from here.
            await asyncio.wait(monitors)
        for child in reversed(self._children):
            await self._stop(child)

    # -- internals -----------------------------------------------------------------------
    def _event(self, child: _Child, text: str, level: int = logging.INFO) -> None:
        line = f"{child.spec.name}: {text}"
        log.log(level, line)
        child.log_line(text)
        if self._on_event is not None:
            self._on_event(line)

    async def _notify(self) -> None:
        async with self._changed:
            self._changed.notify_all()

    async def _spawn(self, child: _Child) -> None:
        spec = child.spec
        exe = spec.executable()
        if exe is None:
            raise SpecError(f"{spec.name}: binary {spec.argv[0]!r} not found or not executable")
        child.log_path.parent.mkdir(parents=True, exist_ok=True)
        if child.log_file is None:
            child.log_file = _open_log(child.log_path)
        child.state = ChildState.STARTING
        child.proc = await asyncio.create_subprocess_exec(
            exe,
            *spec.argv[1:],
            stdin=asyncio.subprocess.DEVNULL,
            stdout=child.log_file,
            stderr=asyncio.subprocess.STDOUT,
            env=spec.full_env(),
            cwd=spec.cwd,
            start_new_session=True,  # own process group: shutdown signals the whole group
            preexec_fn=_set_parent_death_signal,
        )
        child.started_at = time.monotonic()
        self._event(child, f"started pid {child.proc.pid}: {' '.join(spec.argv)}")
        await self._notify()

    async def _wait_healthy(self, child: _Child) -> bool:
        spec, proc = child.spec, child.proc
        assert proc is not None
        deadline = time.monotonic() + spec.start_timeout_s
        while time.monotonic() < deadline:
            if proc.returncode is not None:
                child.last_exit = proc.returncode
                return False
            if spec.health is None or await probe(spec.health):
                child.state = ChildState.HEALTHY
                what = spec.health.describe() if spec.health else "no health check"
                self._event(child, f"healthy ({what})")
                await self._notify()
                return True
            await asyncio.sleep(0.1)
        return False

    def _start_failure(self, child: _Child) -> str:
        proc = child.proc
        if proc is not None and proc.returncode is not None:
            why = f"exited with code {proc.returncode} before becoming healthy"
        else:
            check = child.spec.health.describe() if child.spec.health else "?"
            why = f"not healthy after {child.spec.start_timeout_s:g} s ({check})"
        return (
            f"{child.spec.name} {why}; last log lines ({child.log_path}):\n{_tail(child.log_path)}"
        )

    async def _monitor(self, child: _Child) -> None:
        backoff = self._backoff_initial
        while True:
            assert child.proc is not None
            code = await child.proc.wait()
            if self._closing:
                return
            # Leftovers of the dead child's group (it may have forked) go with it.
            child.signal_group(signal.SIGKILL)
            child.last_exit = code
            ran_for = time.monotonic() - child.started_at
            if ran_for >= self._stable_after:
                backoff = self._backoff_initial
            if not child.spec.restart:
                child.state = ChildState.STOPPED
                self._event(child, f"exited with code {code}; not restarted", logging.WARNING)
                await self._notify()
                return
            child.state = ChildState.BACKOFF
            child.restarts += 1
            self._event(
                child,
                f"exited with code {code} after {ran_for:.1f} s; restarting in {backoff:g} s "
                f"(restart #{child.restarts})",
                logging.WARNING,
            )
            await self._notify()
            await asyncio.sleep(backoff)
            backoff = min(backoff * 2, self._backoff_max)
            try:
                await self._spawn(child)
            except (OSError, SpecError) as err:
                self._event(child, f"restart failed: {err}", logging.ERROR)
                continue
            if not await self._wait_healthy(child):
                self._event(child, "not healthy after restart; killing it", logging.ERROR)
                child.signal_group(signal.SIGKILL)

    async def _probe_liveness(self, child: _Child) -> None:
        """Kill a healthy child whose health check fails ``liveness_failures`` times in a row
        (Kubernetes' liveness probe): a hung process or a dead engine thread gets the same
        restart as a crash, which :meth:`_monitor` then performs."""
        spec = child.spec
        assert spec.health is not None
        failures = 0
        while True:
            await asyncio.sleep(spec.liveness_interval_s)
            proc = child.proc
            if child.state != ChildState.HEALTHY or proc is None or proc.returncode is not None:
                failures = 0
                continue
            if await probe(spec.health, limit_s=spec.liveness_interval_s):
                failures = 0
                continue
            failures += 1
            if failures < spec.liveness_failures:
                continue
            failures = 0
            self._event(
                child,
                f"failed {spec.liveness_failures} health checks in a row "
                f"(wanted {spec.health.describe()}); killing it for a restart",
                logging.ERROR,
            )
            child.state = ChildState.BACKOFF
            child.signal_group(signal.SIGKILL)

    async def _stop(self, child: _Child) -> None:
        proc = child.proc
        if proc is not None and proc.returncode is None:
            child.state = ChildState.STOPPING
            self._event(child, f"stopping (signal {signal.Signals(child.spec.stop_signal).name})")
            child.signal_group(child.spec.stop_signal)
            limit = child.spec.stop_timeout_s
            exited = False
            if child.spec.repeat_stop_signal:
                # A second signal means "now" to livekit-server (force stop); stopped right
                # after its start it otherwise hangs in its graceful shutdown.
                exited = await _exited_within(proc, limit / 2)
                if not exited:
                    self._event(child, f"still running after {limit / 2:g} s; repeating the signal")
                    child.signal_group(child.spec.stop_signal)
                    limit /= 2
            if not exited and not await _exited_within(proc, limit):
                self._event(
                    child,
                    f"still running after {child.spec.stop_timeout_s:g} s; sending SIGKILL",
                    logging.WARNING,
                )
                child.signal_group(signal.SIGKILL)
                await proc.wait()
            self._event(child, f"stopped (exit code {proc.returncode})")
        # Whatever the child forked into its group dies with it.
        child.signal_group(signal.SIGKILL)
        child.state = ChildState.STOPPED
        if child.log_file is not None:
            child.log_file.close()
            child.log_file = None
        await self._notify()


async def _exited_within(proc: asyncio.subprocess.Process, limit_s: float) -> bool:
    # asyncio.timeout rather than wait_for: see worker.stack.process (bpo-42130).
    try:
        async with asyncio.timeout(limit_s):
            await proc.wait()
    except TimeoutError:
        return False
    return True


def _open_log(path: Path) -> IO[bytes]:
    # Kept open (append) while the child runs, across restarts; closed in _stop(). Owner-only:
    # logs name callers' rooms and numbers, and a child may log what it should not.
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o600)
    os.fchmod(fd, 0o600)  # a log left by an earlier run with wider permissions
    return os.fdopen(fd, "ab")


def _tail(path: Path, lines: int = 15) -> str:
    try:
        text = path.read_text(encoding="utf-8", errors="replace").splitlines()
    except OSError:
        return "    (no log)"
    return "\n".join("    " + line for line in text[-lines:])


class BackgroundSupervisor:
    """A :class:`Supervisor` on its own event loop in a daemon thread (synchronous API).

    ``with BackgroundSupervisor(specs, run_dir) as sup:`` returns once every child is healthy
    (or raises :class:`StartError`); leaving the block stops them all.
    """

    def __init__(self, specs: Sequence[ProcessSpec], run_dir: Path, **kwargs: Any) -> None:
        self._specs = list(specs)
        self._run_dir = Path(run_dir)
        self._kwargs = kwargs
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sup: Supervisor | None = None
        self._stop: asyncio.Event | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None
        self._thread = threading.Thread(target=self._run, name="voicestack-supervisor", daemon=True)

    def _run(self) -> None:
        asyncio.run(self._main())

    async def _main(self) -> None:
        self._loop = asyncio.get_running_loop()
        self._stop = asyncio.Event()
        self._sup = Supervisor(self._specs, self._run_dir, **self._kwargs)
        try:
            await self._sup.start()
        except BaseException as err:  # handed to the caller's thread, re-raised there
            self._error = err
            self._ready.set()
            return
        self._ready.set()
        try:
            await self._stop.wait()
        finally:
            await self._sup.aclose()

    def __enter__(self) -> BackgroundSupervisor:
        self._thread.start()
        self._ready.wait()
        if self._error is not None:
            self._thread.join()
            raise self._error
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    def close(self) -> None:
        """Stop all children (reverse order) and the thread; idempotent."""
        if self._loop is not None and self._stop is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._stop.set)
        if self._thread.is_alive():
            self._thread.join()

    def _call(self, fn: Callable[[Supervisor], Any], timeout: float | None = None) -> Any:
        assert self._loop is not None and self._sup is not None
        sup = self._sup

        async def run() -> Any:
            result = fn(sup)
            if asyncio.iscoroutine(result):
                return await result
            return result

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def status(self) -> list[ChildStatus]:
        """Snapshot of every child (taken on the supervisor's loop)."""
        result: list[ChildStatus] = self._call(lambda s: s.status())
        return result

    def child(self, name: str) -> ChildStatus:
        status: ChildStatus = self._call(lambda s: s.child(name))
        return status

    def wait_for(self, predicate: Callable[[list[ChildStatus]], bool], limit_s: float) -> bool:
        """Block until ``predicate(status())`` holds; False on timeout."""
        ok: bool = self._call(lambda s: s.wait_for(predicate, limit_s), limit_s + 5)
        return ok
