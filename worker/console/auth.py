"""Who may use the console: the password, login rate limiting, sessions and CSRF checks.

One shared operator password (``VOICESTACK_CONSOLE_PASSWORD``, at least 12 characters; there is
no default) opens a server-side session whose random token travels in an ``HttpOnly``,
``SameSite=Strict`` cookie. Scripts may instead send ``Authorization: Bearer`` with
``VOICESTACK_CONSOLE_TOKEN`` (when that is set). Every state-changing request made with a
session must also come from the console's own origin or carry the session's CSRF token.
"""

from __future__ import annotations

import hashlib
import hmac
import secrets
import time
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

__all__ = [
    "MIN_PASSWORD_CHARS",
    "PASSWORD_ENV",
    "SESSION_COOKIE",
    "TOKEN_ENV",
    "AuthError",
    "LoginLimiter",
    "Session",
    "SessionTable",
    "constant_time_equal",
    "origin_allowed",
    "secrets_from_env",
]

PASSWORD_ENV = "VOICESTACK_CONSOLE_PASSWORD"
TOKEN_ENV = "VOICESTACK_CONSOLE_TOKEN"
MIN_PASSWORD_CHARS = 12
SESSION_COOKIE = "voicestack_console"


class AuthError(ValueError):
    """The console's secrets are missing or too weak: it must not start."""


def secrets_from_env(env: Mapping[str, str]) -> tuple[str, str | None]:
    """The console password and the optional API token; ``AuthError`` when either is unusable."""
    password = env.get(PASSWORD_ENV, "")
    if not password:
        raise AuthError(
            f"{PASSWORD_ENV} is not set: the console has no default password; set one of at "
            f"least {MIN_PASSWORD_CHARS} characters"
        )
    if len(password) < MIN_PASSWORD_CHARS:
        raise AuthError(
            f"{PASSWORD_ENV} is too short ({len(password)} characters): use at least "
            f"{MIN_PASSWORD_CHARS}"
        )
    token = env.get(TOKEN_ENV) or None
    if token is not None and len(token) < MIN_PASSWORD_CHARS:
        raise AuthError(f"{TOKEN_ENV} is too short: use at least {MIN_PASSWORD_CHARS} characters")
    return password, token


def constant_time_equal(given: str, expected: str) -> bool:
    """Compare secrets without leaking their length or common prefix through timing."""
    # Hashing first makes both sides the same length, which compare_digest needs to be
    # constant-time.
    a = hashlib.sha256(given.encode("utf-8", "surrogatepass")).digest()
    b = hashlib.sha256(expected.encode("utf-8", "surrogatepass")).digest()
    return hmac.compare_digest(a, b)


class LoginLimiter:
    """At most ``attempts`` failed logins per client per ``window_s``; bounded in clients."""

    def __init__(
        self, attempts: int = 5, window_s: float = 60.0, *, max_clients: int = 10_000
    ) -> None:
        self._attempts = attempts
        self._window_s = window_s
        self._max_clients = max_clients
        self._failures: OrderedDict[str, deque[float]] = OrderedDict()

    def _recent(self, client: str, now: float) -> deque[float]:
        failures = self._failures.get(client)
        if failures is None:
            return deque()
        while failures and now - failures[0] > self._window_s:
            failures.popleft()
        return failures

    def blocked(self, client: str, now: float | None = None) -> float:
        """Seconds until ``client`` may try again (0: it may now)."""
        now = time.monotonic() if now is None else now
        failures = self._recent(client, now)
        if len(failures) < self._attempts:
            return 0.0
        return max(0.0, self._window_s - (now - failures[0]))

    def failed(self, client: str, now: float | None = None) -> None:
        """Count a failed login of ``client``."""
        now = time.monotonic() if now is None else now
        failures = self._recent(client, now)
        failures.append(now)
        self._failures[client] = failures
        self._failures.move_to_end(client)
        while len(self._failures) > self._max_clients:
            self._failures.popitem(last=False)

    def succeeded(self, client: str) -> None:
        """Forget ``client``'s failures."""
        self._failures.pop(client, None)


@dataclass
class Session:
    """One logged-in browser."""

    token: str
    csrf: str
    user: str
    created: float
    last_seen: float
    data: dict[str, str] = field(default_factory=dict)


class SessionTable:
    """Server-side sessions: idle and absolute expiry, and a bound on how many are kept."""

    def __init__(
        self,
        *,
        idle_s: float = 3600.0,
        max_age_s: float = 12 * 3600.0,
        max_sessions: int = 1000,
    ) -> None:
        self.idle_s = idle_s
        self.max_age_s = max_age_s
        self._max = max_sessions
        self._sessions: OrderedDict[str, Session] = OrderedDict()

    def __len__(self) -> int:
        return len(self._sessions)

    def create(self, user: str, now: float | None = None) -> Session:
        """A new session (the least recently used one goes when the table is full)."""
        now = time.monotonic() if now is None else now
        session = Session(secrets.token_urlsafe(32), secrets.token_urlsafe(32), user, now, now)
        self._sessions[session.token] = session
        while len(self._sessions) > self._max:
            self._sessions.popitem(last=False)
        return session

    def get(self, token: str | None, now: float | None = None) -> Session | None:
        """The live session of ``token`` (its idle timer restarts), or None."""
        if not token:
            return None
        now = time.monotonic() if now is None else now
        session = self._sessions.get(token)
        if session is None:
            return None
        if now - session.last_seen > self.idle_s or now - session.created > self.max_age_s:
            del self._sessions[token]
            return None
        session.last_seen = now
        self._sessions.move_to_end(token)
        return session

    def drop(self, token: str | None) -> None:
        """Log a session out."""
        if token:
            self._sessions.pop(token, None)


def origin_allowed(origin: str | None, host: str | None, scheme: str) -> bool:
    """True when ``origin`` (the request's ``Origin`` header) is the console's own origin."""
    if not origin or not host or origin == "null":
        return False
    return origin.rstrip("/") in {f"{scheme}://{host}", f"http://{host}", f"https://{host}"}
