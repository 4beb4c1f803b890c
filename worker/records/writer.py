"""The record writer: the one thread of an agent worker's main process that owns the store.

Job processes put finished calls into the spool (:class:`worker.records.spool.Spool`); the
writer drains the spool into the store every ``flush_interval_s`` (at once when nudged, from its
own process) and runs retention every ``retention_interval_s``. When the store is unavailable the
records wait in the spool: one WARNING says so, one INFO says when the store is back, and no
call ever waits on the database.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path

from worker.config.records import RecordsConfig
from worker.records.retention import apply_retention
from worker.records.spool import Spool
from worker.records.store import RecordStore, StoreError, store_url

__all__ = ["RecordWriter"]

log = logging.getLogger(__name__)


def _utcnow() -> datetime:
    return datetime.now(UTC)


class RecordWriter:
    """Drains the spool into the store and applies retention, on a daemon thread.

    Raises :class:`worker.config.loader.ConfigError` when ``cfg.store_url`` names an unset
    variable, and :class:`StoreError` when it is no valid store URL; connecting happens later,
    on the thread, and never raises.
    """

    def __init__(self, cfg: RecordsConfig, *, now: Callable[[], datetime] = _utcnow) -> None:
        self._cfg = cfg
        self._now = now
        self.spool = Spool.of(cfg)
        self._store = RecordStore(store_url(cfg))
        self._wake = threading.Event()
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._migrated = False
        self._outage: str | None = None  # the store's error while it is unavailable
        self._next_retention = 0.0  # monotonic; 0: at the first cycle that reaches the store
        self._last_failure = ""

    @property
    def store_available(self) -> bool:
        """False from a failed store operation until one succeeds again."""
        return self._outage is None

    def start(self) -> None:
        """Start the thread: migrate (retried each cycle until it works), then drain and
        apply retention on schedule."""
        if self._thread is not None:
            raise RuntimeError("the record writer was started already")
        self._thread = threading.Thread(target=self._run, name="record-writer", daemon=True)
        self._thread.start()

    def nudge(self) -> None:
        """Drain now instead of at the next interval (job processes cannot reach it: they are
        other processes; they leave their records in the spool)."""
        self._wake.set()

    def stop(self, timeout_s: float = 5.0) -> None:
        """Make a last drain attempt, close the store and end the thread (waits ``timeout_s``)."""
        thread = self._thread
        if thread is None:
            self._store.close()
            return
        self._stopping.set()
        self._wake.set()
        thread.join(timeout_s)
        if thread.is_alive():
            log.warning(
                "records: the writer did not finish within %.1f s; unwritten records stay in %s",
                timeout_s,
                self.spool.directory,
            )

    def _run(self) -> None:
        try:
            while not self._stopping.is_set():
                self._guarded_cycle(final=False)
                self._wake.wait(self._cfg.flush_interval_s)
                self._wake.clear()
            self._guarded_cycle(final=True)
        finally:
            self._store.close()

    def _guarded_cycle(self, *, final: bool) -> None:
        try:
            self._cycle(final=final)
        except Exception as err:
            # A bug or a broken spool directory must not end the thread, nor flood the log
            # every flush interval: each distinct failure is logged once.
            text = f"{type(err).__name__}: {err}"
            if text != self._last_failure:
                self._last_failure = text
                log.exception("records: the writer failed (%s); retrying", text)
        else:
            self._last_failure = ""

    def _cycle(self, *, final: bool) -> None:
        if not self._migrated:
            try:
                self._store.migrate()
            except StoreError as err:
                self._unavailable(str(err))
                return
            self._migrated = True
        result = self.spool.drain(self._store)
        if result.error is not None:
            self._unavailable(result.error)
            return
        if self._outage is not None:
            if result.written == 0:
                try:
                    self._store.ping()  # an empty spool proves nothing about the store
                except StoreError as err:
                    self._unavailable(str(err))
                    return
            self._outage = None
            log.info("records: the store is back")
        if result.written:
            log.info("records: wrote %d from the spool", result.written)
        if not final and time.monotonic() >= self._next_retention:
            self._next_retention = time.monotonic() + self._cfg.retention_interval_s
            try:
                apply_retention(
                    self._store,
                    Path(self._cfg.recordings_dir),
                    self._cfg.retention_days,
                    now=self._now(),
                )
            except StoreError as err:
                self._next_retention = 0.0  # again once the store is back
                self._unavailable(str(err))

    def _unavailable(self, error: str) -> None:
        if self._outage is None:
            log.warning(
                "records: the store is unavailable (%s); records wait in %s and are retried "
                "every %g s",
                error,
                self.spool.directory,
                self._cfg.flush_interval_s,
            )
        self._outage = error
