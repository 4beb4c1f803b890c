"""The keyed hash that finds a caller's calls without the store holding the caller's number.

Records may keep only the last digits of a caller ID (``mask_caller_id``); ``caller_key`` is an
HMAC of the full number, so ``voicestack records purge --caller NUMBER`` can find every call of
that caller, while someone who reads the store cannot test guessed numbers without the secret.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import secrets
from pathlib import Path

from worker.config.records import RecordsConfig

__all__ = ["KEY_BYTES", "caller_key", "key_path", "load_secret", "normalize_number"]

KEY_BYTES = 32


def normalize_number(number: str) -> str:
    """``number`` as ``+`` and its digits (``"+1 (555) 123-4567"`` -> ``"+15551234567"``), so
    that the ways a number is written hash alike."""
    digits = re.sub(r"[^0-9]", "", number)
    if not digits:
        raise ValueError("a caller number needs at least one digit")
    return "+" + digits


def caller_key(number: str, secret: bytes) -> str:
    """HMAC-SHA256 (hex) of the normalized ``number`` under ``secret``."""
    normalized = normalize_number(number).encode()
    return hmac.new(secret, normalized, hashlib.sha256).hexdigest()


def key_path(cfg: RecordsConfig) -> Path:
    """Where the generated secret lives when ``cfg.caller_key_env`` is unset."""
    return Path(cfg.spool_dir).parent / "caller.key"


def _read_key(path: Path) -> bytes:
    key = path.read_bytes()
    if len(key) != KEY_BYTES:
        raise ValueError(f"{path}: expected a {KEY_BYTES}-byte caller key, found {len(key)} bytes")
    return key


def load_secret(cfg: RecordsConfig) -> bytes:
    """The caller-key secret: the environment variable ``cfg.caller_key_env`` when set (the same
    on every host that shares a store), else a random key created once at :func:`key_path`
    (mode 0600)."""
    value = os.environ.get(cfg.caller_key_env)
    if value:
        return value.encode()
    path = key_path(cfg)
    try:
        return _read_key(path)
    except FileNotFoundError:
        pass
    path.parent.mkdir(parents=True, exist_ok=True)
    # Written whole under a temporary name, then linked into place: link() fails when the key
    # exists (like O_EXCL), so two processes starting together agree on the first key, and
    # nobody reads a half-written one.
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{secrets.token_hex(4)}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(secrets.token_bytes(KEY_BYTES))
            f.flush()
            os.fsync(f.fileno())
        try:
            os.link(tmp, path)
        except FileExistsError:
            pass  # another process won; use its key
    finally:
        tmp.unlink(missing_ok=True)
    return _read_key(path)
