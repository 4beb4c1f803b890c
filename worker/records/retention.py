"""Retention: records and recordings of calls that ended long enough ago are deleted.

The agent worker's writer runs :func:`apply_retention` every ``retention_interval_s``;
``voicestack records retention`` runs it at once. :func:`remove_records` deletes the recording
files of records already deleted from the store, for retention and ``records purge`` alike.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass
from datetime import datetime, timedelta
from pathlib import Path

from worker.records.record import CallRecord
from worker.records.store import RecordStore

__all__ = ["Removed", "apply_retention", "remove_records"]

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Removed:
    """One call whose record (and recording) is gone."""

    call_id: str
    ended_at: datetime | None
    recording: str | None
    """The recording's path (relative to the recordings directory), None without one."""


def _delete_recording(root: Path, relative: str, call_id: str) -> None:
    path = root / relative
    try:
        # A path outside the recordings directory is never deleted, whatever the store says.
        inside = path.resolve().is_relative_to(root.resolve())
    except (OSError, RuntimeError):
        inside = False
    if not inside:
        log.error(
            "records: call %s: recording %r is outside %s; not deleted", call_id, relative, root
        )
        return
    try:
        path.unlink()
    except FileNotFoundError:
        log.warning("records: call %s: recording %s was already gone", call_id, path)
    except OSError as err:
        log.error("records: call %s: cannot delete recording %s: %s", call_id, path, err)


def remove_records(records: list[CallRecord], recordings_dir: Path) -> list[Removed]:
    """Delete the recording files of ``records`` (already deleted from the store)."""
    removed = []
    for record in records:
        recording = record.recording.path if record.recording is not None else None
        if recording is not None:
            _delete_recording(Path(recordings_dir), recording, record.call_id)
        removed.append(Removed(record.call_id, record.ended_at, recording))
    return removed


def apply_retention(
    store: RecordStore, recordings_dir: Path, days: int, *, now: datetime
) -> list[Removed]:
    """Delete the records of calls that ended more than ``days`` before ``now``, and their
    recordings; log each removed call and a summary. Raises ``StoreError``."""
    cutoff = now - timedelta(days=days)
    removed = remove_records(store.delete_ended_before(cutoff), recordings_dir)
    for item in removed:
        ended = item.ended_at.isoformat() if item.ended_at is not None else "never"
        log.info(
            "retention: removed call %s (ended %s, recording %s)",
            item.call_id,
            ended,
            item.recording or "none",
        )
    log.info(
        "retention: removed %d call(s) that ended before %s (%d day(s))",
        len(removed),
        cutoff.isoformat(timespec="seconds"),
        days,
    )
    return removed
