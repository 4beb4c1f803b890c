"""Errors of the model downloader (:mod:`worker.models.download`), each with its CLI exit code."""

from __future__ import annotations

__all__ = [
    "ChecksumError",
    "DownloadError",
    "LockedError",
    "NetworkError",
    "NoSpaceError",
    "Retryable",
]


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


class Retryable(Exception):
    """A transient failure in the middle of a transfer: resume from the .part file."""
