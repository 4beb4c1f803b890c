"""Supervisor behaviour with real child processes (small Python programs, no LiveKit)."""

from __future__ import annotations

import asyncio
import os
import signal
import socket
import sys
from pathlib import Path

import pytest

from worker.stack.ports import free_port
from worker.stack.process import HealthCheck, PortSpec, ProcessSpec
from worker.stack.supervisor import ChildState, StartError, Supervisor

PY = sys.executable

# Listens on argv[1] (the health check), forks a grandchild that ignores SIGTERM and writes its
# pid to argv[2], then idles; optionally exits with code 3 after argv[3] seconds.
LISTENER = """
import socket, subprocess, sys, time
port, pidfile = int(sys.argv[1]), sys.argv[2]
life = float(sys.argv[3]) if len(sys.argv) > 3 else 1e9
g = subprocess.Popen([sys.executable, "-c",
    "import signal, time; signal.signal(signal.SIGTERM, signal.SIG_IGN); time.sleep(300)"])
open(pidfile, "w").write(str(g.pid))
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("127.0.0.1", port)); s.listen()
print("listening", port, flush=True)
time.sleep(life)
sys.exit(3)
"""


def _alive(pid: int) -> bool:
    """True if ``pid`` exists and is not a zombie."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, ProcessLookupError):
        return False
    return state != "Z"


def _listener(name: str, tmp_path: Path, life: float | None = None) -> tuple[ProcessSpec, Path]:
    port = free_port()
    pidfile = tmp_path / f"{name}.grandchild"
    argv = [PY, "-c", LISTENER, str(port), str(pidfile)] + ([str(life)] if life else [])
    spec = ProcessSpec(
        name=name,
        argv=tuple(argv),
        health=HealthCheck("tcp", "127.0.0.1", port),
        start_timeout_s=20,
        stop_timeout_s=5,
        ports=(PortSpec("127.0.0.1", port),),
    )
    return spec, pidfile


async def test_ordered_start_health_and_shutdown_leave_no_process(tmp_path: Path) -> None:
    http_port = free_port()
    web = ProcessSpec(
        name="web",
        argv=(PY, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"),
        cwd=tmp_path,
        health=HealthCheck("http", "127.0.0.1", http_port, "/"),
        start_timeout_s=20,
    )
    worker, grandchild_file = _listener("worker", tmp_path)
    events: list[str] = []
    async with Supervisor([web, worker], tmp_path / "run", on_event=events.append) as sup:
        status = {s.name: s for s in sup.status()}
        assert all(s.state is ChildState.HEALTHY for s in status.values())
        pids = [s.pid for s in status.values()]
        grandchild = int(grandchild_file.read_text())
        assert all(p is not None and _alive(p) for p in pids) and _alive(grandchild)
        # "worker" was started only after "web" was healthy.
        order = [e for e in events if "started pid" in e or "healthy" in e]
        assert [e.split(":")[0] for e in order] == ["web", "web", "worker", "worker"]
        assert "healthy" in order[1]
    stops = [e.split(":")[0] for e in events if "stopping" in e]
    assert stops == ["worker", "web"]  # reverse order
    assert not any(_alive(p) for p in pids if p is not None)
    # The grandchild ignored SIGTERM; the group SIGKILL after its parent stopped took it.
    for _ in range(50):
        if not _alive(grandchild):
            break
        await asyncio.sleep(0.1)
    assert not _alive(grandchild)
    assert (tmp_path / "run" / "web.log").read_text().count("GET / HTTP") >= 1


async def test_killed_child_is_restarted_with_backoff_and_says_so(tmp_path: Path) -> None:
    spec, _ = _listener("worker", tmp_path)
    events: list[str] = []
    async with Supervisor(
        [spec], tmp_path / "run", backoff_initial_s=0.2, on_event=events.append
    ) as sup:
        first = sup.child("worker").pid
        assert first is not None
        os.kill(first, signal.SIGKILL)
        ok = await sup.wait_for(
            lambda st: st[0].restarts == 1 and st[0].state is ChildState.HEALTHY, 20
        )
        assert ok, events
        now = sup.child("worker")
        assert now.pid not in (None, first) and now.last_exit == -signal.SIGKILL
    assert any(
        "exited with code -9" in e and "restarting in 0.2 s (restart #1)" in e for e in events
    )
    log = (tmp_path / "run" / "worker.log").read_text()
    assert "restarting in 0.2 s" in log and log.count("\nlistening ") == 2


async def test_crash_loop_backoff_doubles(tmp_path: Path) -> None:
    spec, _ = _listener("flaky", tmp_path, life=0.5)
    events: list[str] = []
    async with Supervisor(
        [spec], tmp_path / "run", backoff_initial_s=0.1, backoff_max_s=0.4, on_event=events.append
    ) as sup:
        assert await sup.wait_for(lambda st: st[0].restarts >= 4, 30), events
    delays = [e.split("restarting in ")[1].split(" s")[0] for e in events if "restarting in" in e]
    assert delays[:4] == ["0.1", "0.2", "0.4", "0.4"]
    assert all("exited with code 3" in e for e in events if "restarting in" in e)


async def test_taken_port_and_missing_binary_refuse_to_start(tmp_path: Path) -> None:
    spec, _ = _listener("worker", tmp_path)
    missing = ProcessSpec(name="ghost", argv=(str(tmp_path / "no-such-binary"),))
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", spec.ports[0].port))
        taken.listen()
        with pytest.raises(StartError) as err:
            async with Supervisor([spec, missing], tmp_path / "run"):
                pytest.fail("must not start")
    text = str(err.value)
    assert f"worker: tcp port 127.0.0.1:{spec.ports[0].port} is already in use" in text
    assert "ghost: binary" in text and "not found or not executable" in text
    assert not (tmp_path / "run" / "worker.log").exists()  # nothing was started


async def test_child_dying_before_healthy_fails_start_and_stops_the_rest(tmp_path: Path) -> None:
    first, _ = _listener("first", tmp_path)
    dying = ProcessSpec(
        name="dying",
        argv=(PY, "-c", "import sys; print('bad config: nope', flush=True); sys.exit(7)"),
        health=HealthCheck("tcp", "127.0.0.1", free_port()),
        start_timeout_s=10,
    )
    events: list[str] = []
    sup = Supervisor([first, dying], tmp_path / "run", on_event=events.append)
    with pytest.raises(StartError) as err:
        await sup.start()
    assert "dying exited with code 7 before becoming healthy" in str(err.value)
    assert "bad config: nope" in str(err.value)  # the log tail is in the message
    pid = next(e for e in events if e.startswith("first: started pid")).split()[3].rstrip(":")
    assert not _alive(int(pid))


# Counts SIGTERMs in a file; exits on the second one (like livekit-server's "force" stop).
STUBBORN = """
import signal, sys, time
count = 0
def on_term(signum, frame):
    global count
    count += 1
    open(sys.argv[1], "w").write(str(count))
    if count == 2:
        sys.exit(0)
signal.signal(signal.SIGTERM, on_term)
print("ready", flush=True)
while True:
    time.sleep(0.05)
"""


@pytest.mark.parametrize("repeat", [True, False])
async def test_stop_signal_is_repeated_only_when_asked(tmp_path: Path, repeat: bool) -> None:
    counter = tmp_path / "terms"
    spec = ProcessSpec(
        name="stubborn",
        argv=(PY, "-c", STUBBORN, str(counter)),
        stop_timeout_s=2,
        repeat_stop_signal=repeat,
    )
    events: list[str] = []
    async with Supervisor([spec], tmp_path / "run", on_event=events.append) as sup:
        pid = sup.child("stubborn").pid
        assert pid is not None
        for _ in range(100):  # wait until the handler is installed
            if "\nready\n" in (tmp_path / "run" / "stubborn.log").read_text():
                break
            await asyncio.sleep(0.05)
    assert not _alive(pid)
    if repeat:
        assert counter.read_text() == "2"
        assert any("stopped (exit code 0)" in e for e in events)
        assert not any("SIGKILL" in e for e in events)
    else:
        assert counter.read_text() == "1"  # a drain is never cut short by a second signal
        assert any("sending SIGKILL" in e for e in events)


async def test_liveness_restarts_a_child_that_stops_answering(tmp_path: Path) -> None:
    """A healthy child whose health check fails ``liveness_failures`` times in a row (here:
    stopped with SIGSTOP, as a hung process) is killed and restarted like a crash."""
    port = free_port()
    http = ProcessSpec(
        name="hung",
        argv=(PY, "-m", "http.server", str(port), "--bind", "127.0.0.1"),
        cwd=tmp_path,
        health=HealthCheck("http", "127.0.0.1", port, "/"),
        start_timeout_s=20,
        stop_timeout_s=5,
        liveness_failures=2,
        liveness_interval_s=0.2,
    )
    async with Supervisor([http], tmp_path, backoff_initial_s=0.1) as sup:
        first = sup.child("hung").pid
        assert first is not None
        os.kill(first, signal.SIGSTOP)
        assert await sup.wait_for(
            lambda st: st[0].restarts == 1 and st[0].state == ChildState.HEALTHY, 20
        ), sup.status()
        assert sup.child("hung").pid != first
        assert not _alive(first)


async def test_no_liveness_probing_unless_asked(tmp_path: Path) -> None:
    http_port = free_port()
    http = ProcessSpec(
        name="paused",
        argv=(PY, "-m", "http.server", str(http_port), "--bind", "127.0.0.1"),
        cwd=tmp_path,
        health=HealthCheck("http", "127.0.0.1", http_port, "/"),
        start_timeout_s=20,
        stop_timeout_s=5,
    )
    async with Supervisor([http], tmp_path, backoff_initial_s=0.1) as sup:
        pid = sup.child("paused").pid
        assert pid is not None
        os.kill(pid, signal.SIGSTOP)
        await asyncio.sleep(1.5)
        assert sup.child("paused").restarts == 0
        os.kill(pid, signal.SIGCONT)
