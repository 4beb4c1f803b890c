"""The tables of the call-record store, the same on SQLite and PostgreSQL.

This is the schema as of the newest migration (Alembic's ``target_metadata``); the migrations
in ``migrations/versions`` create it step by step and stay as they were written.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa

__all__ = ["UtcDateTime", "calls", "events", "metadata", "turns"]


class UtcDateTime(sa.TypeDecorator[datetime]):
    """An aware datetime stored in UTC; SQLite keeps no zone, so it gets naive UTC text, whose
    text order is then time order (``since``/``until`` compare correctly)."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError(f"naive datetime {value!r}: records keep aware datetimes only")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: sa.Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


metadata = sa.MetaData(
    naming_convention={
        "ix": "ix_%(table_name)s_%(column_0_name)s",
        "pk": "pk_%(table_name)s",
        "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    }
)
"""The schema as of the newest migration (Alembic's ``target_metadata``)."""

calls = sa.Table(
    "calls",
    metadata,
    sa.Column("call_id", sa.String(200), primary_key=True),
    sa.Column("version", sa.Integer, nullable=False),
    sa.Column("direction", sa.String(16), nullable=False),
    sa.Column("started_at", UtcDateTime, nullable=False, index=True),
    sa.Column("ended_at", UtcDateTime, index=True),
    sa.Column("called", sa.Text),
    sa.Column("caller", sa.Text),
    sa.Column("caller_key", sa.Text, index=True),
    sa.Column("flow", sa.Text),
    sa.Column("outcome", sa.String(16), nullable=False),
    sa.Column("ended_by", sa.String(16)),
    sa.Column("outcome_detail", sa.Text, nullable=False),
    sa.Column("redacted", sa.Boolean, nullable=False),
    sa.Column("turn_count", sa.Integer, nullable=False),
    sa.Column("recording_path", sa.Text),
    sa.Column("recording_format", sa.String(8)),
    sa.Column("recording_sha256", sa.String(64)),
    sa.Column("recording_bytes", sa.BigInteger),
    sa.Column("recording_duration_s", sa.Double),
    sa.Column("recording_silenced", sa.JSON(none_as_null=True)),
)


def _child_table(name: str, *columns: sa.Column[Any]) -> sa.Table:
    return sa.Table(
        name,
        metadata,
        sa.Column(
            "call_id",
            sa.String(200),
            sa.ForeignKey("calls.call_id", ondelete="CASCADE"),
            primary_key=True,
        ),
        sa.Column("seq", sa.Integer, primary_key=True),
        *columns,
    )


turns = _child_table(
    "turns",
    sa.Column("role", sa.String(16), nullable=False),
    sa.Column("text", sa.Text, nullable=False),
    sa.Column("at_s", sa.Double, nullable=False),
    sa.Column("interrupted", sa.Boolean, nullable=False),
    sa.Column("latency", sa.JSON, nullable=False),
)
events = _child_table(
    "events",
    sa.Column("kind", sa.String(64), nullable=False),
    sa.Column("at_s", sa.Double, nullable=False),
    sa.Column("detail", sa.JSON, nullable=False),
)
