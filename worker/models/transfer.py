"""Byte transfer for the model downloader: HTTP and local-folder sources, resume from ``.part``.

A source opens a file at an offset (HTTP ``Range``; a plain re-download when the server ignores
ranges); :func:`transfer` appends the rest to the ``.part`` file and returns the sha256 of the
whole of it. Transient breaks raise :class:`~worker.models.download_errors.Retryable` so the
caller resumes. Standard library only, like the rest of the downloader.
"""

from __future__ import annotations

import errno
import hashlib
import http.client
import io
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import BinaryIO, TextIO

from worker.models.download_errors import DownloadError, NetworkError, NoSpaceError, Retryable
from worker.models.manifest import ModelEntry, ModelFile
from worker.models.progress import Progress

__all__ = [
    "CHUNK",
    "FileSource",
    "HttpSource",
    "Opened",
    "Source",
    "sha256_file",
    "source_for",
    "transfer",
]

CHUNK = 1024 * 1024
USER_AGENT = "voicestack-model-download/1"


@dataclass
class Opened:
    """A source opened at a resume offset."""

    stream: BinaryIO
    start: int
    """Offset of the first byte the stream yields (0 when the source ignored the resume offset)."""
    total: int | None
    """Full size of the file at the source, when it says."""


class Source:
    """Where one file's bytes come from; opened again at an offset to resume."""

    def describe(self) -> str:
        raise NotImplementedError

    def open(self, offset: int) -> Opened:
        raise NotImplementedError


class HttpSource(Source):
    """A URL (the manifest's, or an internal mirror's); resumes with HTTP ``Range``."""

    def __init__(self, url: str, timeout: float) -> None:
        self.url, self.timeout = url, timeout

    def describe(self) -> str:
        return self.url

    def open(self, offset: int) -> Opened:
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
                return Opened(stream=io.BytesIO(), start=offset, total=offset)
            err.close()
            raise DownloadError(f"{self.url}: HTTP {err.code} {err.reason}") from None
        except urllib.error.URLError as err:
            raise NetworkError(
                f"cannot reach {host}: {err.reason}. If this machine has no internet access, "
                f"install from a copy with --mirror DIR or an internal server with --mirror URL "
                f"(see models/README.md)"
            ) from None
        except (TimeoutError, ConnectionError, http.client.HTTPException) as err:
            raise Retryable(f"{host}: {err}") from err
        length = response.headers.get("Content-Length")
        if response.status == 206:
            content_range = response.headers.get("Content-Range", "")
            start, total = parse_content_range(content_range)
            if start != offset:
                response.close()
                raise DownloadError(f"{self.url}: server resumed at {start}, asked {offset}")
            return Opened(stream=response, start=offset, total=total)
        return Opened(stream=response, start=0, total=int(length) if length else None)


def parse_content_range(value: str) -> tuple[int, int | None]:
    """``(first byte, full size or None)`` of a ``Content-Range`` header."""
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


class FileSource(Source):
    """A file in a local mirror folder."""

    def __init__(self, path: Path) -> None:
        self.path = path

    def describe(self) -> str:
        return str(self.path)

    def open(self, offset: int) -> Opened:
        try:
            stream = self.path.open("rb")
        except OSError as err:
            raise DownloadError(f"cannot read mirror file {self.path}: {err.strerror}") from None
        total = os.fstat(stream.fileno()).st_size
        stream.seek(min(offset, total))
        return Opened(stream=stream, start=min(offset, total), total=total)


def source_for(entry: ModelEntry, item: ModelFile, mirror: str | None, timeout: float) -> Source:
    """The source of ``item``: its manifest URL, or the same path under ``mirror``."""
    assert entry.dir is not None
    relpath = f"{entry.dir}/{item.name}"
    if mirror is None:
        if item.url is None:
            raise DownloadError(
                f"{relpath}: the manifest has no URL for this file; install it with --mirror"
            )
        return HttpSource(item.url, timeout)
    if mirror.startswith(("http://", "https://")):
        return HttpSource(f"{mirror.rstrip('/')}/{urllib.parse.quote(relpath)}", timeout)
    root = Path(mirror)
    if not root.is_dir():
        raise DownloadError(f"mirror directory {root} does not exist")
    # The same layout as a models dir (copy one from a connected machine), or files side by side.
    for candidate in (root / relpath, root / item.name):
        if candidate.is_file():
            return FileSource(candidate)
    raise DownloadError(f"mirror {root} has neither {relpath} nor {item.name}")


def sha256_file(path: Path, hasher: hashlib._Hash | None = None) -> hashlib._Hash:
    """Feed ``path`` into ``hasher`` (a new sha256 by default) and return it."""
    hasher = hasher or hashlib.sha256()
    with path.open("rb") as stream:
        while block := stream.read(CHUNK):
            hasher.update(block)
    return hasher


def transfer(source: Source, part: Path, item: ModelFile, out: TextIO) -> hashlib._Hash:
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
                    raise Retryable(f"{source.describe()}: {err}") from err
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
            raise Retryable(f"{source.describe()}: connection closed early")
        return hasher
    finally:
        opened.stream.close()
