"""The record writer against a real PostgreSQL that goes down and comes back, and its schedule
(nudges, retention, the last drain at stop) on SQLite."""

from __future__ import annotations

import logging
import re
import time
from collections.abc import Callable, Iterator
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest
from pg_server import PgServer

from worker.config.records import RecordsConfig
from worker.records.record import CallRecord, Recording
from worker.records.spool import DrainResult
from worker.records.store import RecordQuery, RecordStore
from worker.records.writer import RecordWriter

Factory = Callable[..., CallRecord]
LOGGER = "worker.records"


def _wait(condition: Callable[[], bool], what: str, timeout_s: float = 15.0) -> None:
    deadline = time.monotonic() + timeout_s
    while not condition():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout_s} s waiting for {what}")
        time.sleep(0.02)


def _config(tmp_path: Path, url: str, **fields: object) -> RecordsConfig:
    values: dict[str, object] = {
        "store_url": url,
        "spool_dir": str(tmp_path / "spool"),
        "recordings_dir": str(tmp_path / "audio"),
        "flush_interval_s": 0.05,
    }
    values.update(fields)
    return RecordsConfig.model_validate(values)


def _messages(caplog: pytest.LogCaptureFixture, level: int, text: str) -> list[str]:
    return [
        r.getMessage()
        for r in caplog.records
        if r.levelno == level and r.name.startswith(LOGGER) and text in r.getMessage()
    ]


def _written(caplog: pytest.LogCaptureFixture) -> int:
    """Records the writer says it wrote (its log line follows each drain)."""
    lines = _messages(caplog, logging.INFO, "records: wrote ")
    return sum(int(re.search(r"wrote (\d+) from", line)[1]) for line in lines)  # type: ignore[index]


class CountingDrains:
    """Counts the writer's drain attempts (to know that retries happened)."""

    def __init__(self, writer: RecordWriter) -> None:
        self.count = 0
        self._drain = writer.spool.drain
        writer.spool.drain = self  # type: ignore[method-assign]

    def __call__(self, store: RecordStore) -> DrainResult:
        self.count += 1
        return self._drain(store)


@pytest.fixture
def writers() -> Iterator[list[RecordWriter]]:
    started: list[RecordWriter] = []
    yield started
    for writer in started:
        writer.stop()


def _fresh(make: Factory, call_id: str) -> CallRecord:
    """A call that ended a minute ago (older ones would meet retention at once)."""
    return make(call_id, started=datetime.now(UTC) - timedelta(minutes=4))


def _stored(url: str) -> set[str]:
    with RecordStore(url) as store:
        return {s.call_id for s in store.search(RecordQuery(limit=1000))}


def test_records_wait_in_the_spool_while_postgres_is_down(
    pg_server: PgServer,
    pg_database: str,
    tmp_path: Path,
    make: Factory,
    caplog: pytest.LogCaptureFixture,
    writers: list[RecordWriter],
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    writer = RecordWriter(_config(tmp_path, pg_database))
    writers.append(writer)
    writer.start()
    writer.spool.put(_fresh(make, "before"))
    writer.nudge()
    # The log line comes after the drain: wait for it, not for the empty spool.
    _wait(lambda: _written(caplog) == 1, "a write")
    assert writer.spool.pending() == []

    pg_server.stop()
    try:
        drains = CountingDrains(writer)
        for i in range(5):
            writer.spool.put(_fresh(make, f"during-{i}"))
            writer.nudge()
        _wait(lambda: drains.count >= 5, "the writer to retry")
        assert len(writer.spool.pending()) == 5  # all still there
        warnings = _messages(caplog, logging.WARNING, "the store is unavailable")
        assert len(warnings) == 1, warnings  # once per outage, not per retry
        assert f"127.0.0.1:{pg_server.port}" in warnings[0]
        assert not writer.store_available
    finally:
        pg_server.start()

    _wait(lambda: _written(caplog) == 6, "the drain once PostgreSQL is back")
    assert writer.spool.pending() == []
    assert _stored(pg_database) == {"before"} | {f"during-{i}" for i in range(5)}
    assert len(_messages(caplog, logging.INFO, "the store is back")) == 1
    assert writer.store_available
    assert len(_messages(caplog, logging.WARNING, "the store is unavailable")) == 1


def test_the_writer_migrates_once_postgres_appears(
    pg_server: PgServer,
    pg_database: str,
    tmp_path: Path,
    make: Factory,
    caplog: pytest.LogCaptureFixture,
    writers: list[RecordWriter],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    migrations: list[None] = []
    migrate = RecordStore.migrate

    def counting_migrate(self: RecordStore) -> None:
        migrations.append(None)
        migrate(self)

    monkeypatch.setattr(RecordStore, "migrate", counting_migrate)
    pg_server.stop()
    try:
        writer = RecordWriter(_config(tmp_path, pg_database))
        writers.append(writer)
        drains = CountingDrains(writer)
        writer.spool.put(_fresh(make, "early"))
        writer.start()
        _wait(lambda: len(migrations) >= 4, "several failed migrations")
        assert drains.count == 0  # no drain before the schema is there
        assert len(_messages(caplog, logging.WARNING, "unavailable")) == 1
    finally:
        pg_server.start()
    _wait(lambda: _written(caplog) == 1, "the drain once PostgreSQL is back")
    assert writer.spool.pending() == []
    assert _stored(pg_database) == {"early"}
    assert _messages(caplog, logging.INFO, "the store is back")


def test_a_nudge_drains_at_once_and_stop_drains_last(
    tmp_path: Path, make: Factory, writers: list[RecordWriter]
) -> None:
    url = f"sqlite:///{tmp_path / 'records.db'}"
    writer = RecordWriter(_config(tmp_path, url, flush_interval_s=3600))
    writers.append(writer)
    drains = CountingDrains(writer)
    writer.start()
    _wait(lambda: drains.count == 1, "the first cycle")
    writer.spool.put(_fresh(make, "nudged"))
    writer.nudge()
    _wait(lambda: not writer.spool.pending(), "the nudged drain", timeout_s=5)
    writer.spool.put(_fresh(make, "last"))
    writer.stop()
    assert writer.spool.pending() == []
    assert _stored(url) == {"nudged", "last"}


def test_the_writer_applies_retention(
    tmp_path: Path, make: Factory, caplog: pytest.LogCaptureFixture, writers: list[RecordWriter]
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER)
    url = f"sqlite:///{tmp_path / 'records.db'}"
    now = datetime(2024, 6, 1, tzinfo=UTC)
    audio = tmp_path / "audio" / "old.ogg"
    audio.parent.mkdir()
    audio.write_bytes(b"OggS")
    recording = Recording(path="old.ogg", format="ogg", sha256="0" * 64, bytes=4, duration_s=1)
    with RecordStore(url) as store:
        store.migrate()
        store.save(make("old", started=now - timedelta(days=40), recording=recording))
        store.save(make("new", started=now - timedelta(days=10)))
    writer = RecordWriter(_config(tmp_path, url, retention_days=30), now=lambda: now)
    writers.append(writer)
    writer.start()
    # The summary is logged last, after the files are gone.
    _wait(lambda: bool(_messages(caplog, logging.INFO, "retention: removed 1 call")), "retention")
    assert _stored(url) == {"new"}
    assert not audio.exists()
    [line] = _messages(caplog, logging.INFO, "retention: removed call old")
    assert "recording old.ogg" in line and "2024-04-22" in line
