"""The first schema: calls, their turns and their events.

Revision ID: 0001
Revises:
Create Date: 2025-01-01 00:00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "calls",
        sa.Column("call_id", sa.String(200), nullable=False),
        sa.Column("version", sa.Integer, nullable=False),
        sa.Column("direction", sa.String(16), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("ended_at", sa.DateTime(timezone=True)),
        sa.Column("called", sa.Text),
        sa.Column("caller", sa.Text),
        sa.Column("caller_key", sa.Text),
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
        sa.Column("recording_silenced", sa.JSON),
        sa.PrimaryKeyConstraint("call_id", name="pk_calls"),
    )
    for column in ("started_at", "ended_at", "caller_key"):
        op.create_index(f"ix_calls_{column}", "calls", [column])
    for name, columns in (
        (
            "turns",
            [
                sa.Column("role", sa.String(16), nullable=False),
                sa.Column("text", sa.Text, nullable=False),
                sa.Column("at_s", sa.Double, nullable=False),
                sa.Column("interrupted", sa.Boolean, nullable=False),
                sa.Column("latency", sa.JSON, nullable=False),
            ],
        ),
        (
            "events",
            [
                sa.Column("kind", sa.String(64), nullable=False),
                sa.Column("at_s", sa.Double, nullable=False),
                sa.Column("detail", sa.JSON, nullable=False),
            ],
        ),
    ):
        op.create_table(
            name,
            sa.Column("call_id", sa.String(200), nullable=False),
            sa.Column("seq", sa.Integer, nullable=False),
            *columns,
            sa.PrimaryKeyConstraint("call_id", "seq", name=f"pk_{name}"),
            sa.ForeignKeyConstraint(
                ["call_id"],
                ["calls.call_id"],
                name=f"fk_{name}_call_id_calls",
                ondelete="CASCADE",
            ),
        )


def downgrade() -> None:
    op.drop_table("events")
    op.drop_table("turns")
    for column in ("caller_key", "ended_at", "started_at"):
        op.drop_index(f"ix_calls_{column}", "calls")
    op.drop_table("calls")
