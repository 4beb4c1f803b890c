"""``voicestack records``: migrate, list, show, export, purge and retention of call records.

Every subcommand reads the ``records:`` section of ``--config`` (default ``config/agent.yaml``).
A store that cannot be reached or an invalid configuration is one clear line on stderr and exit
status 2; a call that is not there or a recording that fails its checksum is exit status 1.
"""

from __future__ import annotations

import argparse
import hashlib
import os
import sys
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import replace
from datetime import UTC, datetime
from pathlib import Path

from worker.config.agent import load_agent_config
from worker.config.loader import ConfigError
from worker.config.records import RecordsConfig
from worker.records.caller_key import caller_key, key_path, load_secret
from worker.records.record import CallRecord
from worker.records.retention import Removed, apply_retention, remove_records
from worker.records.spool import safe_name
from worker.records.store import CallSummary, RecordQuery, RecordStore, StoreError, store_url

__all__ = ["register"]

DEFAULT_CONFIG = Path("config/agent.yaml")
_PAGE = 500


class _Failed(Exception):
    """A handled failure: ``message`` on stderr, exit status ``status``."""

    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


def _when(text: str) -> datetime:
    """An ISO date or datetime; without a zone it is UTC."""
    try:
        value = datetime.fromisoformat(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not an ISO date or datetime: {text!r}") from None
    return value if value.tzinfo is not None else value.replace(tzinfo=UTC)


def _load(args: argparse.Namespace) -> RecordsConfig:
    try:
        return load_agent_config(args.config).records
    except ConfigError as err:
        raise _Failed(str(err), 2) from None


@contextmanager
def _store(cfg: RecordsConfig) -> Iterator[RecordStore]:
    try:
        store = RecordStore(store_url(cfg))
    except (ConfigError, StoreError) as err:
        raise _Failed(str(err), 2) from None
    try:
        yield store
    except StoreError as err:
        raise _Failed(str(err), 2) from None
    finally:
        store.close()


def _handler(body: Callable[[argparse.Namespace], int]) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        try:
            return body(args)
        except _Failed as err:
            print(f"records: error: {err}", file=sys.stderr)
            return err.status

    return run


def _migrate(args: argparse.Namespace) -> int:
    with _store(_load(args)) as store:
        store.migrate()
        print(f"records: {store.safe_url} is at schema revision {store.revision()}")
    return 0


def _table(rows: list[CallSummary]) -> str:
    header = (
        "STARTED (UTC)",
        "CALL",
        "DIR",
        "CALLER",
        "FLOW",
        "OUTCOME",
        "SECONDS",
        "TURNS",
        "REC",
    )
    lines = [header]
    for r in rows:
        seconds = "-" if r.duration_s is None else f"{r.duration_s:.0f}"
        started = r.started_at.astimezone(UTC).strftime("%Y-%m-%d %H:%M:%S")
        recorded = "yes" if r.has_recording else "-"
        caller, flow = r.caller or "-", r.flow or "-"
        lines.append(
            (
                started,
                r.call_id,
                r.direction,
                caller,
                flow,
                r.outcome,
                seconds,
                str(r.turns),
                recorded,
            )
        )
    widths = [max(len(line[i]) for line in lines) for i in range(len(header))]
    return "\n".join(
        "  ".join(c.ljust(w) for c, w in zip(line, widths, strict=True)).rstrip() for line in lines
    )


def _list(args: argparse.Namespace) -> int:
    query = RecordQuery(
        text=args.text,
        caller=args.caller,
        flow=args.flow,
        outcome=args.outcome,
        since=args.since,
        until=args.until,
        limit=args.limit,
    )
    with _store(_load(args)) as store:
        rows = store.search(query)
    print(_table(rows))
    return 0


def _get(store: RecordStore, call_id: str) -> CallRecord:
    record = store.get(call_id)
    if record is None:
        raise _Failed(f"no call {call_id!r} in {store.safe_url}", 1)
    return record


def _show(args: argparse.Namespace) -> int:
    with _store(_load(args)) as store:
        record = _get(store, args.call_id)
    print(record.model_dump_json(indent=2))
    return 0


def _copy_verified(source: Path, target: Path, sha256: str) -> None:
    digest = hashlib.sha256()
    try:
        with source.open("rb") as src, target.open("wb") as dst:
            while chunk := src.read(1 << 20):
                digest.update(chunk)
                dst.write(chunk)
    except OSError as err:
        target.unlink(missing_ok=True)
        raise _Failed(f"cannot copy the recording {source}: {err.strerror or err}", 1) from None
    if digest.hexdigest() != sha256:
        target.unlink(missing_ok=True)
        raise _Failed(
            f"recording {source} does not match its record (sha256 {digest.hexdigest()}, "
            f"expected {sha256}): not exported",
            1,
        )


def _export(args: argparse.Namespace) -> int:
    cfg = _load(args)
    with _store(cfg) as store:
        record = _get(store, args.call_id)
    out: Path = args.out
    out.mkdir(parents=True, exist_ok=True)
    if record.recording is not None:
        source = Path(cfg.recordings_dir) / record.recording.path
        audio = out / f"{safe_name(record.call_id)}.{record.recording.format}"
        _copy_verified(source, audio, record.recording.sha256)
        print(f"records: {audio} (sha256 verified)")
    target = out / f"{safe_name(record.call_id)}.json"
    target.write_text(record.model_dump_json(indent=2) + "\n", encoding="utf-8")
    print(f"records: {target}")
    return 0


def _print_removed(removed: list[Removed], summary: str) -> None:
    """One line per call, then ``summary`` with ``{n}`` filled in."""
    for item in removed:
        ended = item.ended_at.isoformat() if item.ended_at is not None else "not ended"
        print(f"  {item.call_id}  ended {ended}  recording {item.recording or '-'}")
    print("records: " + summary.format(n=len(removed)))


def _purge(args: argparse.Namespace) -> int:
    cfg = _load(args)
    if not _secret_exists(cfg):
        raise _Failed(
            f"no caller key: ${cfg.caller_key_env} is unset and {key_path(cfg)} does not exist, "
            "so no record can carry this caller's key",
            1,
        )
    try:
        key = caller_key(args.caller, load_secret(cfg))
    except (ValueError, OSError) as err:
        raise _Failed(str(err), 2) from None
    with _store(cfg) as store:
        if not args.yes:
            found = [
                _get(store, s.call_id) for s in _search_all(store, RecordQuery(caller_key=key))
            ]
            _print_removed(
                [_removed(r) for r in found],
                "{n} call(s) would be removed: run again with --yes to delete them",
            )
            return 0
        records = store.purge_caller(key)
    _print_removed(remove_records(records, Path(cfg.recordings_dir)), "removed {n} call(s)")
    return 0


def _removed(record: CallRecord) -> Removed:
    recording = record.recording.path if record.recording is not None else None
    return Removed(record.call_id, record.ended_at, recording)


def _search_all(store: RecordStore, query: RecordQuery) -> list[CallSummary]:
    found: list[CallSummary] = []
    while True:
        page = store.search(replace(query, limit=_PAGE, offset=len(found)))
        found.extend(page)
        if len(page) < _PAGE:
            return found


def _secret_exists(cfg: RecordsConfig) -> bool:
    return bool(os.environ.get(cfg.caller_key_env)) or key_path(cfg).is_file()


def _retention(args: argparse.Namespace) -> int:
    cfg = _load(args)
    days = args.days if args.days is not None else cfg.retention_days
    with _store(cfg) as store:
        removed = apply_retention(store, Path(cfg.recordings_dir), days, now=datetime.now(UTC))
    _print_removed(removed, f"removed {{n}} call(s) that ended more than {days} day(s) ago")
    return 0


def _positive(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1")
    return value


def register(subparsers: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Add ``records`` and its subcommands."""
    parser = subparsers.add_parser(
        "records", help="call records: list, show, export, purge a caller, retention"
    )
    sub = parser.add_subparsers(dest="records_command", metavar="SUBCOMMAND", required=True)

    def add(
        name: str, help_text: str, body: Callable[[argparse.Namespace], int]
    ) -> argparse.ArgumentParser:
        cmd = sub.add_parser(name, help=help_text)
        cmd.add_argument(
            "--config", type=Path, default=DEFAULT_CONFIG, help="agent config with `records:`"
        )
        cmd.set_defaults(func=_handler(body))
        return cmd

    add("migrate", "create or upgrade the store's schema", _migrate)

    cmd = add("list", "list calls, newest first", _list)
    cmd.add_argument("--text", help="words said in the call (case-insensitive)")
    cmd.add_argument("--caller", help="part of the (masked) caller ID")
    cmd.add_argument("--flow")
    cmd.add_argument("--outcome")
    cmd.add_argument("--since", type=_when, help="started at or after (ISO, UTC by default)")
    cmd.add_argument("--until", type=_when, help="started before (ISO, UTC by default)")
    cmd.add_argument("--limit", type=_positive, default=50)

    cmd = add("show", "print one call's record as JSON", _show)
    cmd.add_argument("call_id", metavar="CALL_ID")

    cmd = add("export", "write a call's record and recording (checksum verified)", _export)
    cmd.add_argument("call_id", metavar="CALL_ID")
    cmd.add_argument("--out", type=Path, required=True, help="directory to write into")

    cmd = add("purge", "delete every call of one caller (lists them without --yes)", _purge)
    cmd.add_argument("--caller", required=True, metavar="NUMBER", help="the caller's number")
    cmd.add_argument("--yes", action="store_true", help="really delete")

    cmd = add("retention", "delete calls that ended more than N days ago, now", _retention)
    cmd.add_argument("--days", type=_positive, default=None, help="default: retention_days")
