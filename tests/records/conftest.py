"""Fixtures of the call-record tests: a real, throwaway PostgreSQL server and stores over SQLite
and PostgreSQL.

``pg_server`` (session scope) runs Debian's ``initdb`` and ``pg_ctl`` (``/usr/lib/postgresql/
<version>/bin``) on a temp directory; as root it runs them as the ``postgres`` user (PostgreSQL
refuses root). The server listens on a free 127.0.0.1 port with trust authentication, keeps its
socket in the temp directory, skips fsync, and is stopped and deleted at the session's end. A
test may stop and start it (the writer's outage test) but must leave it running. Without
PostgreSQL the tests that need it skip, saying why; with ``CI=true`` they fail instead.

``store`` is a migrated :class:`RecordStore` over a fresh database per test: a new SQLite file,
or a new PostgreSQL database (``CREATE DATABASE``, dropped afterwards).
"""

from __future__ import annotations

import os
import pwd
import shutil
import subprocess
import tempfile
import uuid
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from ci_mode import missing
from pg_server import PG_MISSING, PgServer, pg_bindir

from worker.records.record import CallEvent, CallRecord, Recording, Turn
from worker.records.store import RecordStore
from worker.stack.ports import free_port


@pytest.fixture(scope="session")
def pg_server() -> Iterator[PgServer]:
    bindir = pg_bindir()
    as_root = os.geteuid() == 0
    try:
        owner = pwd.getpwnam("postgres") if as_root else None
    except KeyError:
        owner = None
        bindir = None  # the package creates the user; without it, it is not installed
    if bindir is None:
        missing(PG_MISSING)
    # Not under pytest's tmp dir: that is root-only (0700) and postgres could not enter it.
    root = Path(tempfile.mkdtemp(prefix="voicestack-pg-"))
    if owner is not None:
        os.chown(root, owner.pw_uid, owner.pw_gid)
    server = PgServer(bindir=bindir, root=root, port=free_port())
    try:
        server.init()
        server.start()
        yield server
    finally:
        if server.running():
            try:
                server.stop()
            except (RuntimeError, subprocess.TimeoutExpired):
                pass
        shutil.rmtree(root, ignore_errors=True)


@pytest.fixture
def pg_database(pg_server: PgServer) -> Iterator[str]:
    """The URL of a new, empty database, dropped after the test."""
    name = f"records_{uuid.uuid4().hex[:12]}"
    pg_server.admin(f'CREATE DATABASE "{name}"')
    yield pg_server.url(name)
    if not pg_server.running():
        pg_server.start()  # a test that stopped it failed before starting it again
    pg_server.admin(f'DROP DATABASE "{name}" WITH (FORCE)')


@pytest.fixture(params=["sqlite", "postgresql"])
def store_url(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A fresh, empty store: a new SQLite file or a new PostgreSQL database."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'db' / 'records.db'}"
    url: str = request.getfixturevalue("pg_database")
    return url


@pytest.fixture
def store(store_url: str) -> Iterator[RecordStore]:
    """A migrated store over each backend."""
    store = RecordStore(store_url, connect_timeout_s=2)
    store.migrate()
    yield store
    store.close()


START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)


def make_record(
    call_id: str = "call-1",
    *,
    started: datetime = START,
    minutes: float | None = 3,
    texts: tuple[str, ...] = ("I need help with my bill", "Sure, let me look at it"),
    recording: Recording | None = None,
    **fields: Any,
) -> CallRecord:
    """A finished call with one caller and one agent turn per pair of ``texts``."""
    turns = tuple(
        Turn(
            role="caller" if i % 2 == 0 else "agent",
            text=text,
            at_s=1.5 + i * 2.25,
            interrupted=i == 3,
            latency={} if i % 2 == 0 else {"llm_ttft": 0.1 + 0.2, "e2e": 0.4567891234},
        )
        for i, text in enumerate(texts)
    )
    events = (
        CallEvent(kind="dtmf", at_s=0.75, detail={"digits": "[dtmf]"}),
        CallEvent(kind="hang_up", at_s=9.0),
    )
    ended = None if minutes is None else started + timedelta(minutes=minutes)
    values: dict[str, Any] = {
        "call_id": call_id,
        "started_at": started,
        "ended_at": ended,
        "called": "+15550001000",
        "caller": "***4567",
        "flow": "support",
        "ended_by": "caller",
        "turns": turns,
        "events": events,
        "recording": recording,
    }
    values.update(fields)
    return CallRecord(**values)


@pytest.fixture
def make() -> Callable[..., CallRecord]:
    """:func:`make_record`, for tests in this directory."""
    return make_record
