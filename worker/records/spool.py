"""The spool: records wait here, one JSON file each, until the store has them.

Job processes :meth:`Spool.put` a record when their call ends; the writer thread in the worker's
main process :meth:`Spool.drain`\\ s the spool into the store. A store that is down or slow
therefore costs no call and loses no record: the files stay until it is back. Files are written
atomically (temp file, fsync, rename), so a drainer never sees half a record, and named
``<ns since epoch>-<call id>.json`` so that name order is arrival order.
"""

from __future__ import annotations

import fcntl
import logging
import os
import re
import tempfile
import time
from dataclasses import dataclass
from pathlib import Path

from pydantic import ValidationError

from worker.config.records import RecordsConfig
from worker.records.record import CallRecord
from worker.records.store import RecordStore, StoreError

__all__ = ["DrainResult", "Spool", "SpoolFull", "safe_name"]

log = logging.getLogger(__name__)

_TMP_PREFIX = ".tmp-"
_STALE_TMP_S = 600.0  # a temp file this old belongs to a writer that died mid-put


class SpoolFull(Exception):
    """The spool holds ``max_bytes`` already: the record is not kept."""


@dataclass(frozen=True)
class DrainResult:
    """What one :meth:`Spool.drain` did."""

    written: int
    """Records saved to the store (and their files deleted)."""
    rejected: int
    """Files moved to ``rejected/`` because they hold no valid record."""
    error: str | None
    """Why the drain stopped early (the store failed); None when it got through."""


def safe_name(call_id: str) -> str:
    """``call_id`` as a file-name part: only ``[A-Za-z0-9_.-]``, at most 100 characters."""
    name = re.sub(r"[^A-Za-z0-9_.-]", "_", call_id)[:100]
    return "_" + name if name.startswith(".") else name


def _fsync_dir(directory: Path) -> None:
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _validation_summary(err: ValidationError) -> str:
    # Without the input values: a record's text is personal data, and this goes to the log.
    first = err.errors(include_input=False)[:3]
    parts = [f"{'.'.join(str(p) for p in e['loc']) or '(top)'}: {e['msg']}" for e in first]
    return f"{err.error_count()} error(s): " + "; ".join(parts)


class Spool:
    """A directory of pending records, shared by the processes of one agent host."""

    def __init__(self, directory: Path, *, max_bytes: int = 1 << 30) -> None:
        self.directory = Path(directory)
        self.max_bytes = max_bytes

    @classmethod
    def of(cls, cfg: RecordsConfig) -> Spool:
        """The spool ``records:`` configures (``spool_dir``, ``spool_max_mb``)."""
        return cls(Path(cfg.spool_dir), max_bytes=cfg.spool_max_mb * 1024 * 1024)

    @property
    def rejected_dir(self) -> Path:
        """Where files that hold no valid record are moved (kept for a human to look at)."""
        return self.directory / "rejected"

    def pending(self) -> list[Path]:
        """The files waiting for the store, oldest first."""
        try:
            entries = list(os.scandir(self.directory))
        except FileNotFoundError:
            return []
        names = [
            e.name
            for e in entries
            if e.name.endswith(".json") and not e.name.startswith(".") and e.is_file()
        ]
        return [self.directory / name for name in sorted(names)]

    def pending_bytes(self) -> int:
        """The size of all pending files."""
        total = 0
        for path in self.pending():
            try:
                total += path.stat().st_size
            except FileNotFoundError:
                pass  # drained meanwhile
        return total

    def put(self, record: CallRecord) -> Path:
        """Write ``record`` atomically as a new pending file; raise :class:`SpoolFull` when it
        would take the spool beyond ``max_bytes``.

        Concurrent puts may overshoot the limit by the records in flight: it guards the disk,
        it is not an exact quota.
        """
        data = record.model_dump_json().encode()
        self.directory.mkdir(parents=True, exist_ok=True)
        used = self.pending_bytes()
        if used + len(data) > self.max_bytes:
            raise SpoolFull(
                f"records spool {self.directory} is full ({used} of {self.max_bytes} bytes): "
                f"call {record.call_id} is not recorded"
            )
        final = self.directory / f"{time.time_ns():020d}-{safe_name(record.call_id)}.json"
        fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, suffix=".part", dir=self.directory)
        try:
            with os.fdopen(fd, "wb") as f:
                f.write(data)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, final)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
        _fsync_dir(self.directory)  # the rename itself survives a power cut
        return final

    def drain(self, store: RecordStore) -> DrainResult:
        """Save pending records to ``store``, oldest first, deleting each file once saved.

        One process drains at a time (an ``flock`` on ``.lock``); when another holds it this
        returns ``DrainResult(0, 0, None)`` at once. The first :class:`StoreError` stops the
        drain and keeps the rest. A file that holds no valid record is moved to ``rejected/``
        and logged, never deleted and never in the way of the files behind it.
        """
        self.directory.mkdir(parents=True, exist_ok=True)
        with open(self.directory / ".lock", "ab") as lock:
            try:
                fcntl.flock(lock.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            except BlockingIOError:
                return DrainResult(0, 0, None)
            # The lock goes with the file's close, also when this process dies.
            self._remove_stale_tmp()
            return self._drain_locked(store)

    def _drain_locked(self, store: RecordStore) -> DrainResult:
        written = rejected = 0
        for path in self.pending():
            try:
                record = CallRecord.model_validate_json(path.read_bytes())
            except FileNotFoundError:
                continue
            except ValidationError as err:
                self._reject(path, _validation_summary(err))
                rejected += 1
                continue
            except OSError as err:
                self._reject(path, f"unreadable: {err}")
                rejected += 1
                continue
            try:
                store.save(record)
            except StoreError as err:
                return DrainResult(written, rejected, str(err))
            path.unlink(missing_ok=True)
            written += 1
        return DrainResult(written, rejected, None)

    def _reject(self, path: Path, why: str) -> None:
        target = self.rejected_dir / path.name
        try:
            self.rejected_dir.mkdir(exist_ok=True)
            os.replace(path, target)
        except OSError as err:
            # Still not in the way: the drain goes on, and the next one tries the move again.
            log.error(
                "records: spool file %s is not a valid record (%s); moving it failed: %s",
                path,
                why,
                err,
            )
            return
        log.error(
            "records: spool file %s is not a valid record (%s); moved to %s", path.name, why, target
        )

    def _remove_stale_tmp(self) -> None:
        cutoff = time.time() - _STALE_TMP_S
        for entry in os.scandir(self.directory):
            if entry.name.startswith(_TMP_PREFIX):
                try:
                    if entry.stat().st_mtime < cutoff:
                        os.unlink(entry.path)
                except FileNotFoundError:
                    pass
