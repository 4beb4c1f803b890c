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

Standard library only (``urllib``): it runs on a GPU host's ``python3`` before any image exists.
Exit status: 0 done, 1 verification or checksum failure, 2 bad manifest or arguments,
3 network or mirror unreachable, 4 not enough disk space, 5 another download holds the lock.
"""

from __future__ import annotations

import argparse
import contextlib
import errno
import fcntl
import hashlib
import http.client
import io
import json
import os
import shutil
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

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

__all__ = [
    "ChecksumError",
    "DownloadError",
    "LockedError",
    "NetworkError",
    "NoSpaceError",
    "download_set",
    "main",
    "verify_set",
]

CHUNK = 1024 * 1024
USER_AGENT = "voicestack-model-download/1"
LOCK_FILE = ".download.lock"


class DownloadError(RuntimeError):
    """A download failed; the message says what and how to fix it. ``exit_code`` for the CLI."""

    exit_code = 1


class ChecksumError(DownloadError):
    """Downloaded bytes do not match the manifest (the partial file has been deleted)."""


class NetworkError(DownloadError):
    """The source could not be reached or broke off; the partial file is kept for resuming."""

    exit_code = 3


class NoSpaceError(DownloadError):
    """Not enough free disk space in the models directory."""

    exit_code = 4


class LockedError(DownloadError):
    """Another download into the same models directory is running."""

    exit_code = 5


class _Retryable(Exception):
    """A transient failure in the middle of a transfer: resume from the .part file."""


# --- sources -------------------------------------------------------------------------------


@dataclass
class _Opened:
    stream: BinaryIO
    start: int
    """Offset of the first byte the stream yields (0 when the source ignored the resume offset)."""
    total: int | None
    """Full size of the file at the source, when it says."""


class _Source:
    def describe(self) -> str:
        raise NotImplementedError

    def open(self, offset: int) -> _Opened:
        raise NotImplementedError


class _HttpSource(_Source):
    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    def describe(self) -> str:
        return self.url

    def open(self, offset: int) -> _Opened:
        headers = {"User-Agent": USER_AGENT, "Accept-Encoding": "identity"}
        if offset:
            headers["Range"] = f"bytes={offset}-"
        request = urllib.request.Request(self.url, headers=headers)
        host = urllib.parse.urlsplit(self.url).netloc
        try:
            response = urllib.request.urlopen(request, timeout=self.timeout)
        except urllib.error.HTTPError as err:
            if err.code == 416 and offset:
                # The .part already holds every byte; let the checksum decide.
                err.close()
                return _Opened(stream=io.BytesIO(), start=offset, total=offset)
            err.close()
            raise DownloadError(f"{self.url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise NetworkError(
                f"cannot reach {host}: {err.reason}. If this machine has no internet access, "
                f"install from a copy with --mirror DIR or an internal server with --mirror URL "
                f"(see models/README.md)"
            ) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise _Retryable(f"{host}: {err}") from err
        length = response.headers.get("Content-Length")
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            start, total = _parse_content_range(content_range)
            if start != offset:
                response.close()
                raise DownloadError(f"{self.url}: server resumed at {start}, asked {offset}")
            return _Opened(stream=response, start=offset, total=total)
        return _Opened(stream=response, start=0, total=int(length) if length else None)


def _parse_content_range(value: str) -> tuple[int, int | None]:
    # "bytes 100-199/200" or "bytes 100-199/*"
    try:
        unit, _, rest = value.partition(" ")
        span, _, total = rest.partition("/")
        start = int(span.split("-", 1)[0])
        if unit != "bytes":
            raise ValueError(unit)
        return start, (None if total == "*" else int(total))
    except ValueError:
        raise DownloadError(f"unparsable Content-Range {value!r}") from None


class _FileSource(_Source):
    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def open(self, offset: int) -> _Opened:
        try:
            stream = self.path.open("rb")
        except OSError as err:
            raise DownloadError(f"cannot read mirror file {self.path}: {err.strerror}") from None
        total = os.fstat(stream.fileno()).st_size
        stream.seek(min(offset, total))
        return _Opened(stream=stream, start=min(offset, total), total=total)


def _source_for(entry: ModelEntry, item: ModelFile, mirror: str | None, timeout: float) -> _Source:
    assert entry.dir is not None
    relpath = f"{entry.dir}/{item.name}"
    if mirror is None:
        if item.url is None:
            raise DownloadError(
                f"{relpath}: the manifest has no URL for this file; install it with --mirror"
            )
        return _HttpSource(item.url, timeout)
    if mirror.startswith(("http://", "https://")):
        return _HttpSource(f"{mirror.rstrip('/')}/{urllib.parse.quote(relpath)}", timeout)
    root = Path(mirror)
    if not root.is_dir():
        raise DownloadError(f"mirror directory {root} does not exist")
    # The same layout as a models dir (copy one from a connected machine), or files side by side.
    for candidate in (root / relpath, root / item.name):
        if candidate.is_file():
            return _FileSource(candidate)
    raise DownloadError(f"mirror {root} has neither {relpath} nor {item.name}")


# --- progress ------------------------------------------------------------------------------


def _human(n: float) -> str:
    for unit in ("B", "KB", "MB", "GB"):
        if n < 1000 or unit == "GB":
            return f"{n:.1f} {unit}" if unit != "B" else f"{int(n)} B"
        n /= 1000
    return f"{n:.1f} GB"


class Progress:
    """A one-line progress bar on a terminal; a line per 10 % otherwise (logs, CI)."""

    def __init__(self, label: str, total: int | None, done: int, out: TextIO) -> None:
        self.label, self.total, self.done, self.out = label, total, done, out
        self.tty = out.isatty()
        self.started = time.monotonic()
        self.first = done
        self.last_draw = 0.0
        self.last_decile = -1

    def update(self, n: int) -> None:
        self.done += n
        now = time.monotonic()
        if self.tty and now - self.last_draw >= 0.1:
            self.last_draw = now
            self._draw(end="\r")
        elif not self.tty and self.total:
            decile = min(10, self.done * 10 // self.total)
            if decile != self.last_decile:
                self.last_decile = decile
                self._draw(end="\n")

    def _draw(self, end: str) -> None:
        elapsed = max(time.monotonic() - self.started, 1e-6)
        rate = _human((self.done - self.first) / elapsed) + "/s"
        if self.total:
            frac = min(self.done / self.total, 1.0)
            bar = "#" * int(frac * 30)
            line = (
                f"  {self.label} [{bar:<30}] {frac * 100:5.1f}% "
                f"{_human(self.done)}/{_human(self.total)} {rate}"
            )
        else:
            line = f"  {self.label} {_human(self.done)} {rate}"
        self.out.write(line + end)
        self.out.flush()

    def finish(self) -> None:
        if self.tty:
            self._draw(end="\n")


# --- hashing, stamps, space ----------------------------------------------------------------


def sha256_file(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed ``path`` into ``hasher`` (a new sha256 by default) and return it."""
    hasher = hasher or hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            hasher.update(block)
    return hasher


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
            f"not enough disk space in {directory}: {_human(needed)} more needed, "
            f"{_human(free)} free. Free some space (partial files are kept and resume)"
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


# --- one file ------------------------------------------------------------------------------


def _transfer(source: _Source, part: Path, item: ModelFile, out: TextIO) -> hashlib._Hash:
    """Append the rest of the file to ``part``; return the hash of the whole ``part``."""
    offset = part.stat().st_size if part.exists() else 0
    if item.size is not None and item.size_exact and offset > item.size:
        offset = 0  # longer than the real file: cannot be a prefix of it
    opened = source.open(offset)
    try:
        if opened.start == 0 and offset:
            out.write(f"  {item.name}: the source cannot resume; starting over\n")
            offset = 0
        hasher = hashlib.sha256()
        mode = "ab" if offset else "wb"
        with part.open(mode) as sink:
            if offset:
                sink.truncate(offset)
                sha256_file(part, hasher)  # the kept prefix
            total = opened.total if opened.total is not None else item.size
            progress = Progress(item.name, total, offset, out)
            while True:
                try:
                    block = opened.stream.read(CHUNK)
                except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
                    raise _Retryable(f"{source.describe()}: {err}") from err
                if not block:
                    break
                try:
                    sink.write(block)
                except OSError as err:
                    if err.errno == errno.ENOSPC:
                        raise NoSpaceError(
                            f"disk full while writing {part}; free space and re-run to resume"
                        ) from None
                    raise
                hasher.update(block)
                progress.update(len(block))
            sink.flush()
            os.fsync(sink.fileno())
            progress.finish()
        if opened.total is not None and part.stat().st_size < opened.total:
            raise _Retryable(f"{source.describe()}: connection closed early")
        return hasher
    finally:
        opened.stream.close()


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
    source = _source_for(entry, item, mirror, timeout)
    have = part.stat().st_size if part.exists() else 0
    if item.size is not None:
        _check_space(final.parent, max(item.size - have, 0))
    out.write(f"{relpath} <- {source.describe()}\n")
    attempt = 0
    while True:
        try:
            hasher = _transfer(source, part, item, out)
            break
        except _Retryable as err:
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
            f"{_human(model_set.download_size)}{gpu}: {model_set.description}\n"
        )
        for entry in model_set.entries():
            where = f"package {entry.package}" if entry.package else _human(entry.total_size)
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
