"""Download a model set from ``models/manifest.toml`` into a models directory, verified.

``python -m worker.models.download SET`` (what ``scripts/download_models.sh`` runs):

- every file is written to ``NAME.part`` and renamed to its final name only after its sha256
  matched the manifest, so a final name never holds a partial or wrong file;
- an interrupted download resumes from its ``.part`` (HTTP ``Range``; plain re-download when
  the server ignores ranges);
- ``--mirror DIR|URL`` installs from a local folder (a copy of another models dir, or the files
  side by side) or an internal HTTP mirror with the same layout: no internet needed;
- ``--verify`` re-hashes what is there and downloads nothing;
- a second run is a no-op: verified files are recorded in ``.verified.json`` (size, mtime,
  sha256) and skipped while unchanged.

The bytes move in :mod:`worker.models.transfer`, the progress display is
:mod:`worker.models.progress`, the errors :mod:`worker.models.download_errors`.
Standard library only (``urllib``): it runs on a GPU host's ``python3`` before any image exists.
Exit status: 0 done, 1 verification or checksum failure, 2 bad manifest or arguments,
3 network or mirror unreachable, 4 not enough disk space, 5 another download holds the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import json
import os
import shutil
import sys
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from typing import TextIO

from worker.models.download_errors import (
    ChecksumError,
    DownloadError,
    LockedError,
    NetworkError,
    NoSpaceError,
    Retryable,
)
from worker.models.manifest import (
    STAMP_FILE,
    Manifest,
    ManifestError,
    ModelEntry,
    ModelFile,
    ModelSet,
    load_manifest,
    read_stamps,
    resolve_model_set,
    stamp_matches,
)
from worker.models.paths import ModelNotFoundError, package_dir
from worker.models.progress import human
from worker.models.transfer import sha256_file, source_for, transfer

__all__ = [
    "ChecksumError",
    "DownloadError",
    "LockedError",
    "NetworkError",
    "NoSpaceError",
    "download_set",
    "main",
    "sha256_file",
    "verify_set",
]

LOCK_FILE = ".download.lock"


# --- stamps, space, lock -------------------------------------------------------------------


def _write_stamps(models_dir: Path, stamps: dict[str, dict[str, object]]) -> None:
    tmp = models_dir / (STAMP_FILE + ".tmp")
    tmp.write_text(json.dumps(stamps, indent=1, sort_keys=True) + "\n", encoding="utf-8")
    os.replace(tmp, models_dir / STAMP_FILE)


def _stamp(stamps: dict[str, dict[str, object]], relpath: str, path: Path, sha256: str) -> None:
    st = path.stat()
    stamps[relpath] = {"sha256": sha256, "size": st.st_size, "mtime_ns": st.st_mtime_ns}


def _check_space(directory: Path, needed: int) -> None:
    free = shutil.disk_usage(directory).free
    if needed > free:
        raise NoSpaceError(
            f"not enough disk space in {directory}: {human(needed)} more needed, "
            f"{human(free)} free. Free some space (partial files are kept and resume)"
        )


@contextlib.contextmanager
def _locked(models_dir: Path) -> Iterator[None]:
    with (models_dir / LOCK_FILE).open("a") as handle:
        try:
            fcntl.flock(handle, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            raise LockedError(
                f"another model download into {models_dir} is running; wait for it to finish"
            ) from None
        try:
            yield
        finally:
            fcntl.flock(handle, fcntl.LOCK_UN)


def fetch_file(
    entry: ModelEntry,
    item: ModelFile,
    models_dir: Path,
    stamps: dict[str, dict[str, object]],
    *,
    mirror: str | None,
    timeout: float = 30.0,
    retries: int = 3,
    out: TextIO | None = None,
) -> bool:
    """Make ``models_dir/<dir>/<name>`` hold the verified file; True if bytes were fetched."""
    out = out or sys.stderr
    assert entry.dir is not None
    relpath = f"{entry.dir}/{item.name}"
    if item.sha256 is None:
        raise ManifestError(
            f"{relpath}: the manifest has no sha256 for this file; refusing to install bytes "
            f"nobody can verify. Add the published checksum to models/manifest.toml"
        )
    final = models_dir / relpath
    if final.is_file():
        if stamp_matches(stamps, relpath, final, item.sha256):
            return False
        if sha256_file(final).hexdigest() == item.sha256:
            _stamp(stamps, relpath, final, item.sha256)
            return False
        out.write(f"  {relpath}: present but its sha256 differs; fetching a fresh copy\n")
    final.parent.mkdir(parents=True, exist_ok=True)
    part = final.with_name(final.name + ".part")
    source = source_for(entry, item, mirror, timeout)
    have = part.stat().st_size if part.exists() else 0
    if item.size is not None:
        _check_space(final.parent, max(item.size - have, 0))
    out.write(f"{relpath} <- {source.describe()}\n")
    attempt = 0
    while True:
        try:
            hasher = transfer(source, part, item, out)
            break
        except Retryable as err:
            attempt += 1
            if attempt > retries:
                raise NetworkError(
                    f"{err}; gave up after {retries} retries. The partial file {part} is kept: "
                    f"run the same command again to resume"
                ) from None
            out.write(f"  {item.name}: {err}; resuming (retry {attempt}/{retries})\n")
            time.sleep(min(2.0**attempt, 10.0) * 0.25)
    actual = hasher.hexdigest()
    size = part.stat().st_size
    if actual != item.sha256 or (item.size_exact and item.size is not None and size != item.size):
        part.unlink()
        raise ChecksumError(
            f"{relpath}: checksum mismatch from {source.describe()}: expected sha256 "
            f"{item.sha256}, got {actual} ({size} bytes). The download was deleted; nothing "
            f"was installed. A corrupt mirror or a changed upstream file are the usual causes"
        )
    os.replace(part, final)
    _stamp(stamps, relpath, final, item.sha256)
    return True


# --- sets ----------------------------------------------------------------------------------


def _downloadable(model_set: ModelSet) -> list[tuple[ModelEntry, ModelFile]]:
    return [(e, f) for e in model_set.entries() if e.downloaded for f in e.files]


def download_set(
    manifest: Manifest,
    name: str,
    models_dir: Path,
    *,
    mirror: str | None = None,
    timeout: float = 30.0,
    retries: int = 3,
    out: TextIO | None = None,
) -> int:
    """Install every file of set ``name`` into ``models_dir``; return how many were fetched."""
    out = out or sys.stderr
    model_set = manifest.model_set(name)
    pending = _downloadable(model_set)
    for entry, item in pending:  # refuse before fetching anything
        if item.sha256 is None:
            raise ManifestError(
                f"{entry.dir}/{item.name}: the manifest has no sha256 for this file; refusing "
                f"to install set {name!r}"
            )
    models_dir.mkdir(parents=True, exist_ok=True)
    fetched = 0
    with _locked(models_dir):
        stamps = read_stamps(models_dir)
        try:
            for entry, item in pending:
                fetched += fetch_file(
                    entry,
                    item,
                    models_dir,
                    stamps,
                    mirror=mirror,
                    timeout=timeout,
                    retries=retries,
                    out=out,
                )
        finally:
            _write_stamps(models_dir, stamps)
    for entry in model_set.entries():
        if not entry.downloaded:
            _check_packaged(entry)
    return fetched


def _check_packaged(entry: ModelEntry) -> Path:
    assert entry.package is not None and entry.path is not None
    path = package_dir(entry.package) / entry.path
    if not path.exists():
        raise ModelNotFoundError(f"{entry.key}: {path} missing from package {entry.package}")
    return path


def verify_set(manifest: Manifest, name: str, models_dir: Path, out: TextIO | None = None) -> bool:
    """Re-hash every file of set ``name``; print one line per file; True when all match."""
    out = out or sys.stdout
    model_set = manifest.model_set(name)
    ok = True
    stamps = read_stamps(models_dir) if models_dir.is_dir() else {}
    for entry in model_set.entries():
        if not entry.downloaded:
            try:
                path = _check_packaged(entry)
            except ModelNotFoundError as err:
                out.write(f"MISSING  {entry.key}: {err}\n")
                ok = False
                continue
            if entry.package_sha256 and path.is_file():
                actual = sha256_file(path).hexdigest()
                good = actual == entry.package_sha256
                ok &= good
                out.write(f"{'OK' if good else 'BAD':<8} {path} (package {entry.package})\n")
            else:
                out.write(f"OK       {path} (package {entry.package})\n")
            continue
        for item in entry.files:
            relpath = f"{entry.dir}/{item.name}"
            path = models_dir / relpath
            if not path.is_file():
                out.write(f"MISSING  {relpath}\n")
                ok = False
                continue
            actual = sha256_file(path).hexdigest()
            if item.sha256 is not None and actual == item.sha256:
                _stamp(stamps, relpath, path, item.sha256)
                out.write(f"OK       {relpath}\n")
            else:
                stamps.pop(relpath, None)
                ok = False
                out.write(f"BAD      {relpath}: sha256 {actual}, expected {item.sha256}\n")
    if models_dir.is_dir():
        _write_stamps(models_dir, stamps)
    return ok


def _list_sets(manifest: Manifest, out: TextIO) -> None:
    for model_set in manifest.sets.values():
        gpu = f", ~{model_set.gpu_memory_gib} GiB GPU" if model_set.gpu_memory_gib else ""
        default = " (default)" if model_set.name == manifest.default_set else ""
        out.write(
            f"{model_set.name}{default}: {model_set.device}, download "
            f"{human(model_set.download_size)}{gpu}: {model_set.description}\n"
        )
        for entry in model_set.entries():
            where = f"package {entry.package}" if entry.package else human(entry.total_size)
            out.write(f"  {entry.role:<4} {entry.key} ({where})\n")


def _parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="download_models.sh",
        description="Download a model set from models/manifest.toml, verified by sha256.",
    )
    parser.add_argument("set", nargs="?", help="model set name (see --list)")
    parser.add_argument(
        "--models-dir",
        type=Path,
        default=None,
        help="where models go (default: $VOICESTACK_MODELS_DIR or models/ of this checkout)",
    )
    parser.add_argument("--manifest", type=Path, default=None, help="manifest file to read")
    parser.add_argument(
        "--mirror",
        metavar="DIR|URL",
        help="install from a local folder or an internal HTTP mirror instead of the URLs",
    )
    parser.add_argument("--verify", action="store_true", help="re-hash what is there; no download")
    parser.add_argument(
        "--check",
        action="store_true",
        help="fast check (no hashing) that the set is installed and was verified; no download",
    )
    parser.add_argument("--list", action="store_true", help="list the sets and exit")
    parser.add_argument("--timeout", type=float, default=30.0, help="network timeout, seconds")
    parser.add_argument("--retries", type=int, default=3, help="resume attempts per file")
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """CLI entry point; returns the exit status (see the module docstring)."""
    args = _parser().parse_args(argv)
    try:
        manifest = load_manifest(args.manifest)
        if args.list:
            _list_sets(manifest, sys.stdout)
            return 0
        name = args.set or manifest.default_set
        models_dir = args.models_dir or Path(
            os.environ.get("VOICESTACK_MODELS_DIR") or manifest.path.parent
        )
        if args.check:
            resolve_model_set(name, models_dir, manifest)
            print(f"model set {name!r}: installed and verified in {models_dir}")
            return 0
        if args.verify:
            good = verify_set(manifest, name, models_dir)
            print(f"model set {name!r}: {'verified' if good else 'NOT verified'}")
            return 0 if good else 1
        fetched = download_set(
            manifest,
            name,
            models_dir,
            mirror=args.mirror,
            timeout=args.timeout,
            retries=args.retries,
        )
        print(f"model set {name!r} ready in {models_dir} ({fetched} file(s) fetched)")
        return 0
    except ManifestError as err:
        print(f"error: {err}", file=sys.stderr)
        return 2
    except DownloadError as err:
        print(f"error: {err}", file=sys.stderr)
        return err.exit_code
    except ModelNotFoundError as err:
        print(f"error: {err}", file=sys.stderr)
        return 1
    except BrokenPipeError:  # output piped into `head` and closed: not an error
        return 0
    except OSError as err:
        if err.errno == errno.ENOSPC:
            print(f"error: disk full: {err}", file=sys.stderr)
            return NoSpaceError.exit_code
        print(f"error: {err}", file=sys.stderr)
        return 1


if __name__ == "__main__":
    sys.exit(main())
