"""The record store on SQLite and on a real PostgreSQL: round trips, upserts, search, deletion,
migrations and errors."""

from __future__ import annotations

import time
from collections.abc import Callable
from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path

import pytest
import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext

from worker.records.record import CallRecord, Recording
from worker.records.schema import metadata
from worker.records.store import RecordQuery, RecordStore, StoreError, head_revision
from worker.stack.ports import free_port

Factory = Callable[..., CallRecord]
START = datetime(2024, 5, 1, 9, 0, tzinfo=UTC)
RECORDING = Recording(
    path="2024/05/01/call-1.ogg",
    format="ogg",
    sha256="ab" * 32,
    bytes=123_456_789_012,
    duration_s=180.25,
    silenced=((0, 1.5, 2.75), (1, 10.0, 12.125)),
)


def _rows(store: RecordStore, table: str) -> int:
    engine = sa.create_engine(store.safe_url)
    try:
        with engine.connect() as conn:
            return int(conn.execute(sa.text(f"SELECT count(*) FROM {table}")).scalar_one())
    finally:
        engine.dispose()


def test_a_record_round_trips_exactly(store: RecordStore, make: Factory) -> None:
    berlin = timezone(timedelta(hours=2))
    record = make(
        started=datetime(2024, 5, 1, 11, 0, 0, 123456, tzinfo=berlin),
        texts=("Grüße, Herr MÜLLER 🙂", "it's 'quoted' and \"double\"", "", "cut off"),
        caller_key="k" * 64,
        outcome="transferred",
        outcome_detail="sales queue",
        recording=RECORDING,
        direction="outbound",
        redacted=False,
    )
    store.save(record)
    back = store.get(record.call_id)
    assert back == record
    assert back is not None and back.started_at.tzinfo == UTC
    assert back.started_at == datetime(2024, 5, 1, 9, 0, 0, 123456, tzinfo=UTC)
    assert store.get("nobody") is None


def test_a_live_call_without_recording_round_trips(store: RecordStore, make: Factory) -> None:
    record = make("live", minutes=None, texts=(), events=(), called=None, caller=None)
    store.save(record)
    assert store.get("live") == record


def test_save_is_an_idempotent_upsert(store: RecordStore, make: Factory) -> None:
    first = make(texts=("a", "b", "c", "d"), recording=RECORDING)
    store.save(first)
    store.save(first)
    assert store.get(first.call_id) == first
    assert (_rows(store, "calls"), _rows(store, "turns"), _rows(store, "events")) == (1, 4, 2)

    second = make(texts=("only one",), events=(), outcome="failed", recording=None)
    store.save(second)
    assert store.get(first.call_id) == second
    assert (_rows(store, "calls"), _rows(store, "turns"), _rows(store, "events")) == (1, 1, 0)
    [summary] = store.search(RecordQuery())
    assert (summary.turns, summary.has_recording, summary.outcome) == (1, False, "failed")


def test_search_filters_and_orders_newest_first(store: RecordStore, make: Factory) -> None:
    hour = timedelta(hours=1)
    store.save(make("a", started=START, texts=("My card was declined",), flow="billing"))
    store.save(make("b", started=START + hour, texts=("Grüße aus MÜNCHEN",), caller="***9999"))
    store.save(make("c", started=START + 2 * hour, texts=("100% sure",), outcome="transferred"))
    store.save(make("d", started=START + 3 * hour, direction="outbound", recording=RECORDING))

    def ids(**kwargs: object) -> list[str]:
        return [s.call_id for s in store.search(RecordQuery(**kwargs))]  # type: ignore[arg-type]

    assert ids() == ["d", "c", "b", "a"]
    assert ids(text="CARD WAS") == ["a"]
    assert ids(text="münchen") == ["b"]  # case-insensitive beyond ASCII, on both backends
    assert ids(text="100%") == ["c"]
    assert ids(text="0%") == ["c"]
    assert ids(text="%") == ["c"]  # a literal percent sign, not a wildcard
    assert ids(text="_") == []
    assert ids(caller="9999") == ["b"]
    assert ids(caller="***") == ["d", "c", "b", "a"]
    assert ids(flow="billing") == ["a"]
    assert ids(outcome="transferred") == ["c"]
    assert ids(direction="outbound") == ["d"]
    assert ids(since=START + hour) == ["d", "c", "b"]
    assert ids(until=START + hour) == ["a"]
    berlin = timezone(timedelta(hours=2))
    assert ids(since=(START + hour).astimezone(berlin), until=START + 3 * hour) == ["c", "b"]
    assert ids(limit=2) == ["d", "c"]
    assert ids(limit=2, offset=2) == ["b", "a"]
    assert ids(flow="billing", text="help") == []

    [d] = store.search(RecordQuery(direction="outbound"))
    assert d.has_recording and d.turns == 2 and d.duration_s == 180.0
    assert d.started_at == START + 3 * hour and d.started_at.tzinfo == UTC
    assert (d.caller, d.called, d.flow, d.ended_by) == (
        "***4567",
        "+15550001000",
        "support",
        "caller",
    )


def test_delete_ended_before(store: RecordStore, make: Factory) -> None:
    day = timedelta(days=1)
    old = make("old", started=START - 10 * day, recording=RECORDING)
    older = make("older", started=START - 20 * day)
    recent = make("recent", started=START)
    live = make("live", started=START - 30 * day, minutes=None)
    for record in (old, older, recent, live):
        store.save(record)

    removed = store.delete_ended_before(START - 5 * day)
    assert removed == [older, old]  # whole records, oldest first
    assert store.get("old") is None and store.get("older") is None
    assert store.get("recent") == recent
    assert store.get("live") == live  # a call that never ended is not "old"
    assert _rows(store, "turns") == 4  # no orphans
    assert store.delete_ended_before(START - 5 * day) == []


def test_purge_caller(store: RecordStore, make: Factory) -> None:
    mine = [
        make(f"mine-{i}", caller_key="a" * 64, started=START + timedelta(minutes=i))
        for i in range(3)
    ]
    other = make("other", caller_key="b" * 64)
    nokey = make("nokey")
    for record in (*mine, other, nokey):
        store.save(record)

    assert store.search(RecordQuery(caller_key="a" * 64, limit=10))[0].call_id == "mine-2"
    assert sorted(r.call_id for r in store.purge_caller("a" * 64)) == ["mine-0", "mine-1", "mine-2"]
    assert [s.call_id for s in store.search(RecordQuery())] == ["other", "nokey"]
    assert store.purge_caller("a" * 64) == []
    assert _rows(store, "events") == 4


def test_migrate_is_idempotent_and_at_head(store: RecordStore) -> None:
    store.migrate()
    store.migrate()
    assert store.revision() == head_revision() == "0001"
    engine = sa.create_engine(store.safe_url)
    try:
        with engine.connect() as conn:
            versions = conn.execute(sa.text("SELECT version_num FROM alembic_version")).all()
            assert [v[0] for v in versions] == [head_revision()]
            # The migrations build exactly the schema the code uses.
            assert compare_metadata(MigrationContext.configure(conn), metadata) == []
            fks = sa.inspect(conn).get_foreign_keys("turns")
            assert [(fk["referred_table"], fk["options"].get("ondelete")) for fk in fks] == [
                ("calls", "CASCADE")
            ]
    finally:
        engine.dispose()


def test_a_fresh_store_has_no_revision(store_url: str) -> None:
    with RecordStore(store_url) as store:
        assert store.revision() is None
        with pytest.raises(StoreError, match="save call x"):
            store.save(CallRecord(call_id="x", started_at=START))


def test_unreachable_postgres_is_a_store_error_without_password() -> None:
    port = free_port()
    store = RecordStore(
        f"postgresql+psycopg://agent:s3cret@127.0.0.1:{port}/records", connect_timeout_s=1
    )
    t0 = time.monotonic()
    for action in (store.migrate, store.ping, lambda: store.search(RecordQuery())):
        with pytest.raises(StoreError) as info:
            action()
        message = str(info.value)
        assert "s3cret" not in message
        assert f"agent:***@127.0.0.1:{port}/records" in message
    assert time.monotonic() - t0 < 10
    store.close()


def test_bad_urls_are_store_errors() -> None:
    with pytest.raises(StoreError, match="not a valid SQLAlchemy URL"):
        RecordStore("not a url")
    with pytest.raises(StoreError, match="only sqlite and postgresql"):
        RecordStore("mysql://u@h/db").ping()


def test_sqlite_makes_its_directory_and_uses_wal(tmp_path: Path) -> None:
    path = tmp_path / "deep" / "er" / "records.db"
    with RecordStore(f"sqlite:///{path}") as store:
        store.migrate()
        assert path.is_file()
    engine = sa.create_engine(f"sqlite:///{path}")
    with engine.connect() as conn:
        assert conn.execute(sa.text("PRAGMA journal_mode")).scalar_one() == "wal"
    engine.dispose()


def test_naive_datetimes_are_refused(store: RecordStore) -> None:
    with pytest.raises((StoreError, ValueError)):
        store.search(RecordQuery(since=datetime(2024, 1, 1)))
