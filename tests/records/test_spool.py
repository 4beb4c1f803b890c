"""The spool: atomic puts, oldest-first drains, rejected files, the size limit, and one drainer
at a time across processes."""

from __future__ import annotations

import json
import logging
import os
import subprocess
import sys
import textwrap
import time
from collections.abc import Callable
from datetime import timedelta
from pathlib import Path

import pytest

from worker.records.record import CallRecord
from worker.records.spool import DrainResult, Spool, SpoolFull, safe_name
from worker.records.store import RecordQuery, RecordStore, StoreError

Factory = Callable[..., CallRecord]
REPO = Path(__file__).resolve().parents[2]


class FlakyStore:
    """A store (the one method a drain uses) that fails from the ``fail_at``-th save on."""

    def __init__(self, fail_at: int | None = None) -> None:
        self.saved: list[str] = []
        self.fail_at = fail_at

    def save(self, record: CallRecord) -> None:
        if self.fail_at is not None and len(self.saved) >= self.fail_at:
            raise StoreError("records store sqlite:///x: save: disk I/O error")
        self.saved.append(record.call_id)


@pytest.fixture
def sqlite_store(tmp_path: Path) -> RecordStore:
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    store.migrate()
    return store


def test_put_writes_whole_files_in_arrival_order(tmp_path: Path, make: Factory) -> None:
    spool = Spool(tmp_path / "spool")
    assert spool.pending() == []
    paths = [spool.put(make(f"call/{i}")) for i in range(3)]
    assert spool.pending() == paths
    assert [p.name.split("-", 1)[1] for p in paths] == [f"call_{i}.json" for i in range(3)]
    assert all(p.name[:20].isdigit() for p in paths)
    assert CallRecord.model_validate_json(paths[1].read_bytes()) == make("call/1")
    assert sorted(p.name for p in spool.directory.iterdir()) == sorted(p.name for p in paths)


def test_drain_saves_oldest_first_and_deletes_each_file(
    tmp_path: Path, make: Factory, sqlite_store: RecordStore
) -> None:
    spool = Spool(tmp_path / "spool")
    records = [make(f"c{i}") for i in range(4)]
    for record in records:
        spool.put(record)
    store = FlakyStore()
    assert spool.drain(store) == DrainResult(4, 0, None)  # type: ignore[arg-type]
    assert store.saved == ["c0", "c1", "c2", "c3"]
    assert spool.pending() == []

    # The same through a real store; a newer put of the same call wins.
    spool.put(records[0])
    spool.put(records[0].model_copy(update={"outcome": "failed"}))
    assert spool.drain(sqlite_store) == DrainResult(2, 0, None)
    assert sqlite_store.get("c0") == records[0].model_copy(update={"outcome": "failed"})


def test_drain_stops_at_the_first_store_error_and_keeps_the_rest(
    tmp_path: Path, make: Factory
) -> None:
    spool = Spool(tmp_path / "spool")
    paths = [spool.put(make(f"c{i}")) for i in range(4)]
    result = spool.drain(FlakyStore(fail_at=1))  # type: ignore[arg-type]
    assert result == DrainResult(1, 0, "records store sqlite:///x: save: disk I/O error")
    assert spool.pending() == paths[1:]
    store = FlakyStore()
    assert spool.drain(store) == DrainResult(3, 0, None)  # type: ignore[arg-type]
    assert store.saved == ["c1", "c2", "c3"]


def test_an_invalid_file_is_moved_aside_and_never_blocks(
    tmp_path: Path, make: Factory, caplog: pytest.LogCaptureFixture
) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(make("first"))
    garbage = spool.directory / f"{time.time_ns():020d}-garbage.json"
    garbage.write_bytes(b"\xff not json {")
    wrong = spool.directory / f"{time.time_ns() + 1:020d}-wrong.json"
    wrong.write_text(json.dumps({"call_id": "x", "started_at": "yesterday", "text": "secret"}))
    spool.put(make("last"))

    store = FlakyStore()
    with caplog.at_level(logging.ERROR, logger="worker.records.spool"):
        assert spool.drain(store) == DrainResult(2, 2, None)  # type: ignore[arg-type]
    assert store.saved == ["first", "last"]
    assert spool.pending() == []
    assert sorted(p.name for p in spool.rejected_dir.iterdir()) == sorted(
        [garbage.name, wrong.name]
    )
    assert spool.rejected_dir.joinpath(garbage.name).read_bytes() == b"\xff not json {"
    errors = [r.getMessage() for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 2
    assert garbage.name in errors[0] and "rejected" in errors[0]
    assert "started_at" in errors[1] and "secret" not in errors[1] and "yesterday" not in errors[1]


def test_put_beyond_the_limit_is_spool_full(tmp_path: Path, make: Factory) -> None:
    one = len(make("a").model_dump_json().encode())
    spool = Spool(tmp_path / "spool", max_bytes=2 * one + 10)
    spool.put(make("a"))
    spool.put(make("b"))
    with pytest.raises(SpoolFull, match="is full"):
        spool.put(make("c"))
    assert len(spool.pending()) == 2
    spool.drain(FlakyStore())  # type: ignore[arg-type]
    spool.put(make("c"))  # room again


def _python(code: str) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(code)],
        cwd=REPO,
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )


def test_one_drainer_at_a_time_across_processes(tmp_path: Path, make: Factory) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(make("c0"))
    spool.put(make("c1"))
    holder = _python(
        f"""
        import fcntl, os, sys
        os.makedirs({str(spool.directory)!r}, exist_ok=True)
        f = open(os.path.join({str(spool.directory)!r}, ".lock"), "ab")
        fcntl.flock(f.fileno(), fcntl.LOCK_EX)
        print("locked", flush=True)
        sys.stdin.readline()
        """
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "locked"
        store = FlakyStore()
        assert spool.drain(store) == DrainResult(0, 0, None)  # type: ignore[arg-type]
        assert store.saved == [] and len(spool.pending()) == 2
    finally:
        holder.communicate("\n", timeout=10)
    assert spool.drain(store) == DrainResult(2, 0, None)  # type: ignore[arg-type]


def test_puts_from_another_process_while_draining(
    tmp_path: Path, sqlite_store: RecordStore
) -> None:
    spool_dir = tmp_path / "spool"
    count = 30
    putter = _python(
        f"""
        from datetime import UTC, datetime
        from pathlib import Path
        from worker.records.record import CallRecord
        from worker.records.spool import Spool
        spool = Spool(Path({str(spool_dir)!r}))
        for i in range({count}):
            spool.put(CallRecord(call_id=f"p{{i}}", started_at=datetime.now(UTC)))
        print("done", flush=True)
        """
    )
    spool = Spool(spool_dir)
    deadline = time.monotonic() + 30
    written = 0
    while putter.poll() is None and time.monotonic() < deadline:
        written += spool.drain(sqlite_store).written
    putter.communicate(timeout=10)
    assert putter.returncode == 0
    written += spool.drain(sqlite_store).written
    assert written == count
    assert spool.pending() == []
    assert len(sqlite_store.search(RecordQuery(limit=100))) == count
    assert not [p for p in spool_dir.iterdir() if p.name.startswith(".tmp-")]


def test_stale_temp_files_are_cleaned_up(tmp_path: Path, make: Factory) -> None:
    spool = Spool(tmp_path / "spool")
    spool.put(make("c0"))
    stale = spool.directory / ".tmp-dead.part"
    fresh = spool.directory / ".tmp-busy.part"
    stale.write_bytes(b"{")
    fresh.write_bytes(b"{")
    old = time.time() - timedelta(hours=1).total_seconds()
    os.utime(stale, (old, old))
    spool.drain(FlakyStore())  # type: ignore[arg-type]
    assert not stale.exists() and fresh.exists()


def test_safe_names() -> None:
    assert safe_name("room_+1555/../x") == "room__1555_.._x"
    assert safe_name(".hidden") == "_.hidden"
    assert len(safe_name("x" * 500)) == 100
