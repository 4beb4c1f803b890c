"""The call-record store: one schema over SQLite (embedded) and PostgreSQL (shared by several
agent hosts), written with SQLAlchemy Core and migrated by Alembic (``migrations/`` next to
this file).

The API is synchronous on purpose: its callers (the writer thread of :mod:`worker.records.writer`,
``voicestack records``, the console's worker threads) run it off any event loop. Every database
failure surfaces as :class:`StoreError`, whose message names the store without its password.
Datetimes are stored in UTC (naive UTC text on SQLite, ``timestamptz`` on PostgreSQL) and come
back timezone-aware in UTC.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
from collections.abc import Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

import sqlalchemy as sa
from pydantic import BaseModel, ConfigDict, ValidationError
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from worker.config.records import RecordsConfig
from worker.config.stack import substitute
from worker.records.record import CallRecord
from worker.records.schema import calls, events, metadata, turns

if TYPE_CHECKING:
    from alembic.config import Config

__all__ = [
    "MIGRATIONS_DIR",
    "CallSummary",
    "RecordQuery",
    "RecordStore",
    "StoreError",
    "alembic_config",
    "head_revision",
    "metadata",
    "store_url",
]

MIGRATIONS_DIR = Path(__file__).with_name("migrations")
"""The Alembic script directory, shipped as package data."""

log = logging.getLogger(__name__)

_CHUNK = 500  # ids per IN (...) list: well below SQLite's and PostgreSQL's parameter limits
_MIGRATE_LOCK = 0x766F_6963_6572_6563  # pg_advisory lock key: two hosts never migrate at once


class StoreError(Exception):
    """The store could not do what was asked (unreachable, refused, corrupt, misconfigured)."""


@dataclass(frozen=True)
class RecordQuery:
    """Which calls :meth:`RecordStore.search` returns; unset fields do not filter. Text matches
    are case-insensitive substrings (on PostgreSQL, as the database's collation lowers case)."""

    text: str | None = None
    """A substring of any turn's text."""
    caller: str | None = None
    """A substring of the (masked) caller column."""
    flow: str | None = None
    outcome: str | None = None
    direction: str | None = None
    since: datetime | None = None
    """``started_at >= since``."""
    until: datetime | None = None
    """``started_at < until``."""
    caller_key: str | None = None
    """Exactly this :func:`worker.records.caller_key.caller_key` (``records purge``)."""
    limit: int = 50
    offset: int = 0

    def __post_init__(self) -> None:
        if self.limit < 0 or self.offset < 0:
            raise ValueError("limit and offset must not be negative")


class CallSummary(BaseModel):
    """One row of a search result: a call without its turns and events."""

    model_config = ConfigDict(frozen=True)

    call_id: str
    direction: str
    started_at: datetime
    ended_at: datetime | None
    duration_s: float | None
    called: str | None
    caller: str | None
    flow: str | None
    outcome: str
    ended_by: str | None
    outcome_detail: str
    turns: int
    has_recording: bool


def _like(needle: str) -> str:
    """A LIKE pattern (escape ``\\``) matching ``needle`` anywhere, lower-cased."""
    escaped = needle.lower().replace("\\", "\\\\").replace("%", "\\%").replace("_", "\\_")
    return f"%{escaped}%"


def _contains(column: sa.ColumnElement[Any], needle: str) -> sa.ColumnElement[bool]:
    return sa.func.lower(column).like(_like(needle), escape="\\")


def _call_row(record: CallRecord) -> dict[str, Any]:
    rec = record.recording
    return {
        "call_id": record.call_id,
        "version": record.version,
        "direction": record.direction,
        "started_at": record.started_at,
        "ended_at": record.ended_at,
        "called": record.called,
        "caller": record.caller,
        "caller_key": record.caller_key,
        "flow": record.flow,
        "outcome": record.outcome,
        "ended_by": record.ended_by,
        "outcome_detail": record.outcome_detail,
        "redacted": record.redacted,
        "turn_count": len(record.turns),
        "recording_path": rec.path if rec else None,
        "recording_format": rec.format if rec else None,
        "recording_sha256": rec.sha256 if rec else None,
        "recording_bytes": rec.bytes if rec else None,
        "recording_duration_s": rec.duration_s if rec else None,
        "recording_silenced": [list(span) for span in rec.silenced] if rec else None,
    }


def _record(row: sa.RowMapping, turn_rows: list[Any], event_rows: list[Any]) -> CallRecord:
    recording = None
    if row["recording_path"] is not None:
        recording = {
            "path": row["recording_path"],
            "format": row["recording_format"],
            "sha256": row["recording_sha256"],
            "bytes": row["recording_bytes"],
            "duration_s": row["recording_duration_s"],
            "silenced": row["recording_silenced"] or (),
        }
    fields = ("version", "call_id", "direction", "started_at", "ended_at", "called", "caller")
    more = ("caller_key", "flow", "outcome", "ended_by", "outcome_detail", "redacted")
    data: dict[str, Any] = {name: row[name] for name in fields + more}
    data["recording"] = recording
    data["turns"] = [
        {
            "role": t.role,
            "text": t.text,
            "at_s": t.at_s,
            "interrupted": t.interrupted,
            "latency": t.latency,
        }
        for t in turn_rows
    ]
    data["events"] = [{"kind": e.kind, "at_s": e.at_s, "detail": e.detail} for e in event_rows]
    try:
        return CallRecord.model_validate(data)
    except ValidationError as err:
        raise StoreError(
            f"call {row['call_id']} in the store is not a valid record "
            f"({err.error_count()} error(s), first: {err.errors(include_input=False)[0]['msg']})"
        ) from None


def _summary(row: sa.RowMapping) -> CallSummary:
    started, ended = row["started_at"], row["ended_at"]
    return CallSummary(
        call_id=row["call_id"],
        direction=row["direction"],
        started_at=started,
        ended_at=ended,
        duration_s=None if ended is None else max(0.0, (ended - started).total_seconds()),
        called=row["called"],
        caller=row["caller"],
        flow=row["flow"],
        outcome=row["outcome"],
        ended_by=row["ended_by"],
        outcome_detail=row["outcome_detail"],
        turns=row["turn_count"],
        has_recording=row["recording_path"] is not None,
    )


def _chunks(items: Sequence[str]) -> Iterator[Sequence[str]]:
    for start in range(0, len(items), _CHUNK):
        yield items[start : start + _CHUNK]


def _detail(err: BaseException) -> str:
    """The driver's own words, one line, without the SQL and its parameters (which would put
    transcripts into logs)."""
    orig = getattr(err, "orig", None)
    text = str(orig) if orig is not None else f"{type(err).__name__}: {err}"
    text = re.split(r"\n\[SQL:|\n\(Background on", text)[0]
    text = " ".join(text.split())
    return text if len(text) <= 300 else text[:297] + "..."


def _sqlite_lower(value: object) -> object:
    return value.lower() if isinstance(value, str) else value


class RecordStore:
    """Call records in a SQLAlchemy database (``sqlite:///PATH`` or ``postgresql+psycopg://``).

    Nothing connects until the first call; thread-safe (one pooled engine), though each process
    is meant to have one owner (the writer thread) that writes.
    """

    def __init__(self, url: str, *, connect_timeout_s: float = 5.0) -> None:
        try:
            parsed = sa.make_url(url)
        except sa.exc.ArgumentError:
            raise StoreError("records store: not a valid SQLAlchemy URL") from None
        if parsed.drivername == "postgresql":
            parsed = parsed.set(drivername="postgresql+psycopg")  # psycopg 3 is what we ship
        self._url = parsed
        self._timeout = connect_timeout_s
        self._engine: Engine | None = None
        self._lock = threading.Lock()

    @property
    def safe_url(self) -> str:
        """The URL with its password hidden, for messages."""
        return self._url.render_as_string(hide_password=True)

    def __enter__(self) -> RecordStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _create_engine(self) -> Engine:
        backend = self._url.get_backend_name()
        if backend == "sqlite":
            database = self._url.database or ""
            if database and database != ":memory:" and not database.startswith("file:"):
                Path(database).parent.mkdir(parents=True, exist_ok=True)
            engine = sa.create_engine(self._url, connect_args={"timeout": self._timeout})
            busy_ms = int(self._timeout * 1000)

            @sa.event.listens_for(engine, "connect")
            def _pragmas(dbapi_conn: Any, _record: Any) -> None:
                # Python's lower() so that text search ignores case beyond ASCII, as on
                # PostgreSQL; WAL so the console reads while the writer writes; foreign keys
                # are off per connection unless asked.
                dbapi_conn.create_function("lower", 1, _sqlite_lower, deterministic=True)
                cursor = dbapi_conn.cursor()
                cursor.execute(f"PRAGMA busy_timeout = {busy_ms}")
                cursor.execute("PRAGMA journal_mode = WAL")
                cursor.execute("PRAGMA foreign_keys = ON")
                cursor.close()

            return engine
        if backend == "postgresql":
            return sa.create_engine(
                self._url,
                # A restarted server leaves dead pooled connections: test each before use.
                pool_pre_ping=True,
                pool_timeout=self._timeout,
                connect_args={"connect_timeout": max(1, math.ceil(self._timeout))},
            )
        raise StoreError(f"records store {self.safe_url}: only sqlite and postgresql are supported")

    def _get_engine(self) -> Engine:
        with self._lock:
            if self._engine is None:
                try:
                    self._engine = self._create_engine()
                except OSError as err:
                    raise StoreError(f"records store {self.safe_url}: {err}") from None
                except ImportError as err:
                    raise StoreError(f"records store {self.safe_url}: no driver: {err}") from None
            return self._engine

    @contextmanager
    def _transaction(self, what: str, *, write: bool = True) -> Iterator[Connection]:
        try:
            engine = self._get_engine()
            with engine.begin() if write else engine.connect() as conn:
                yield conn
        except sa.exc.SQLAlchemyError as err:
            raise StoreError(f"records store {self.safe_url}: {what}: {_detail(err)}") from None

    def ping(self) -> None:
        """Raise :class:`StoreError` unless the store answers now."""
        with self._transaction("ping", write=False) as conn:
            conn.execute(sa.text("SELECT 1"))

    def migrate(self) -> None:
        """Bring the schema to the newest revision (``alembic upgrade head``); idempotent."""
        from alembic import command
        from alembic.runtime.migration import MigrationContext
        from alembic.util import CommandError

        alembic_log = logging.getLogger("alembic")
        if alembic_log.level == logging.NOTSET:
            # Alembic narrates every run at INFO (plugins, dialect); one line of ours suffices.
            alembic_log.setLevel(logging.WARNING)
        with self._transaction("migrate") as conn:
            if conn.dialect.name == "postgresql":
                conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _MIGRATE_LOCK})
            before = MigrationContext.configure(conn).get_current_revision()
            try:
                command.upgrade(alembic_config(conn), "head")
            except CommandError as err:
                raise StoreError(f"records store {self.safe_url}: migrate: {err}") from None
            after = MigrationContext.configure(conn).get_current_revision()
        if after != before:
            log.info("records: migrated %s from %s to %s", self.safe_url, before or "empty", after)

    def revision(self) -> str | None:
        """The schema revision the store is at (None: never migrated)."""
        from alembic.runtime.migration import MigrationContext

        with self._transaction("read the schema revision", write=False) as conn:
            return MigrationContext.configure(conn).get_current_revision()

    def save(self, record: CallRecord) -> None:
        """Insert or replace ``record`` (its turns and events too) in one transaction."""
        row = _call_row(record)
        with self._transaction(f"save call {record.call_id}") as conn:
            dialect = postgresql if conn.dialect.name == "postgresql" else sqlite
            insert = dialect.insert(calls).values(**row)
            update = {name: insert.excluded[name] for name in row if name != "call_id"}
            conn.execute(insert.on_conflict_do_update(index_elements=["call_id"], set_=update))
            for table in (turns, events):
                conn.execute(table.delete().where(table.c.call_id == record.call_id))
            if record.turns:
                conn.execute(
                    turns.insert(),
                    [
                        {"call_id": record.call_id, "seq": seq} | t.model_dump()
                        for seq, t in enumerate(record.turns)
                    ],
                )
            if record.events:
                conn.execute(
                    events.insert(),
                    [
                        {"call_id": record.call_id, "seq": seq} | e.model_dump()
                        for seq, e in enumerate(record.events)
                    ],
                )

    def _load(self, conn: Connection, rows: Sequence[sa.RowMapping]) -> list[CallRecord]:
        """Whole records for ``rows`` of ``calls``, in the same order."""
        ids = [row["call_id"] for row in rows]
        children: dict[str, dict[str, list[Any]]] = {i: {"turns": [], "events": []} for i in ids}
        for table in (turns, events):
            for chunk in _chunks(ids):
                query = (
                    table.select()
                    .where(table.c.call_id.in_(chunk))
                    .order_by(table.c.call_id, table.c.seq)
                )
                for child in conn.execute(query):
                    children[child.call_id][table.name].append(child)
        return [
            _record(row, children[row["call_id"]]["turns"], children[row["call_id"]]["events"])
            for row in rows
        ]

    def get(self, call_id: str) -> CallRecord | None:
        """The record of ``call_id``, or None."""
        with self._transaction(f"read call {call_id}", write=False) as conn:
            row = conn.execute(calls.select().where(calls.c.call_id == call_id)).mappings().first()
            return None if row is None else self._load(conn, [row])[0]

    def search(self, query: RecordQuery) -> list[CallSummary]:
        """Calls matching ``query``, newest first."""
        stmt = sa.select(calls).order_by(calls.c.started_at.desc(), calls.c.call_id.desc())
        if query.text:
            stmt = stmt.where(
                sa.exists().where(
                    turns.c.call_id == calls.c.call_id, _contains(turns.c.text, query.text)
                )
            )
        if query.caller:
            stmt = stmt.where(_contains(calls.c.caller, query.caller))
        for name in ("flow", "outcome", "direction", "caller_key"):
            value = getattr(query, name)
            if value is not None:
                stmt = stmt.where(calls.c[name] == value)
        if query.since is not None:
            stmt = stmt.where(calls.c.started_at >= query.since)
        if query.until is not None:
            stmt = stmt.where(calls.c.started_at < query.until)
        stmt = stmt.limit(query.limit).offset(query.offset)
        with self._transaction("search", write=False) as conn:
            return [_summary(row) for row in conn.execute(stmt).mappings()]

    def _delete_where(self, what: str, condition: sa.ColumnElement[bool]) -> list[CallRecord]:
        # One transaction: the records returned are exactly the ones deleted, so the caller can
        # remove their recordings; rows are locked on PostgreSQL so a concurrent save waits.
        with self._transaction(what) as conn:
            select = calls.select().where(condition).order_by(calls.c.started_at, calls.c.call_id)
            rows = conn.execute(select.with_for_update()).mappings().all()
            records = self._load(conn, rows)
            ids = [r.call_id for r in records]
            for chunk in _chunks(ids):
                # Children explicitly as well: ON DELETE CASCADE needs a pragma on SQLite, and a
                # tool that opened the file without it must not leave orphans behind.
                for table in (turns, events, calls):
                    conn.execute(table.delete().where(table.c.call_id.in_(chunk)))
        return records

    def delete_ended_before(self, cutoff: datetime) -> list[CallRecord]:
        """Delete the records of calls that ended before ``cutoff``; return them."""
        return self._delete_where("delete old records", calls.c.ended_at < cutoff)

    def purge_caller(self, caller_key: str) -> list[CallRecord]:
        """Delete every record whose ``caller_key`` is ``caller_key``; return them."""
        return self._delete_where("purge a caller", calls.c.caller_key == caller_key)

    def close(self) -> None:
        """Close pooled connections; a later call reconnects."""
        with self._lock:
            engine, self._engine = self._engine, None
        if engine is not None:
            engine.dispose()


def alembic_config(connection: Connection | None = None, url: str | None = None) -> Config:
    """An Alembic ``Config`` for the shipped migrations, built in code (no alembic.ini): with
    ``connection`` the migrations run on it; else on ``url``."""
    from alembic.config import Config

    cfg = Config()
    cfg.set_main_option("script_location", str(MIGRATIONS_DIR))
    if url is not None:
        cfg.set_main_option("sqlalchemy.url", url.replace("%", "%%"))
    if connection is not None:
        cfg.attributes["connection"] = connection
    return cfg


def head_revision() -> str:
    """The newest revision of the shipped migrations."""
    from alembic.script import ScriptDirectory

    head = ScriptDirectory.from_config(alembic_config()).get_current_head()
    assert head is not None, "the shipped migrations have a head"
    return head


def store_url(cfg: RecordsConfig, environ: Mapping[str, str] | None = None) -> str:
    """``cfg.store_url`` with its ``${VAR}`` placeholders filled from the environment (raises
    :class:`worker.config.loader.ConfigError` naming a variable that has no value)."""
    return substitute(
        cfg.store_url, os.environ if environ is None else environ, "records.store_url"
    )
