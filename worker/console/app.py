"""The console's aiohttp application: settings, shared state, security middleware, login.

Pages live in :mod:`worker.console.pages`, the JSON API, server-sent events and call actions in
:mod:`worker.console.api`. Everything but ``/login`` and ``/static/`` needs a session (or the
API token for ``/api/``); every response carries the security headers of ``_HEADERS``.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import re
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import quote

import aiohttp
import jinja2
from aiohttp import web

from worker.console.auth import (
    SESSION_COOKIE,
    LoginLimiter,
    Session,
    SessionTable,
    constant_time_equal,
    origin_allowed,
)
from worker.console.stats import LatencyStats
from worker.records.live import LiveFeed
from worker.records.store import RecordStore, StoreError

__all__ = [
    "SESSION",
    "STATE",
    "USER",
    "ConsoleSettings",
    "ConsoleState",
    "create_app",
    "render",
    "wants_json",
]

logger = logging.getLogger(__name__)

_PACKAGE = Path(__file__).resolve().parent
_SAFE_METHODS = frozenset({"GET", "HEAD", "OPTIONS"})
_HEADERS = {
    "Content-Security-Policy": (
        "default-src 'self'; img-src 'self' data:; media-src 'self'; object-src 'none'; "
        "base-uri 'none'; frame-ancestors 'none'; form-action 'self'"
    ),
    "X-Frame-Options": "DENY",
    "Referrer-Policy": "no-referrer",
    "X-Content-Type-Options": "nosniff",
    "Cross-Origin-Opener-Policy": "same-origin",
}
_USER = re.compile(r"^[\w .@-]{1,40}$")
_SEED_RECORDS = 20


@dataclass(frozen=True)
class ConsoleSettings:
    """What ``voicestack console`` serves and where it reads from."""

    password: str
    api_token: str | None
    redis_url: str
    store_url: str
    recordings_dir: Path
    inference_url: str
    transfer_targets: Mapping[str, str] = field(default_factory=dict)
    env: Mapping[str, str] = field(default_factory=dict)
    """LIVEKIT_URL / LIVEKIT_API_KEY / LIVEKIT_API_SECRET (room deletion fallback) and the
    inference server's token."""
    capacity_timeout_s: float = 1.5
    session_idle_s: float = 3600.0
    session_max_age_s: float = 12 * 3600.0
    login_attempts: int = 5
    login_window_s: float = 60.0
    command_timeout_s: float = 5.0


@dataclass
class ConsoleState:
    """Everything the handlers share (one per application)."""

    settings: ConsoleSettings
    templates: jinja2.Environment
    sessions: SessionTable
    limiter: LoginLimiter
    feed: LiveFeed
    stats: LatencyStats
    store: RecordStore | None = None
    store_error: str = ""
    http: aiohttp.ClientSession | None = None
    tasks: list[asyncio.Task[None]] = field(default_factory=list)
    capacity_cache: tuple[float, dict[str, Any]] | None = None


STATE = web.AppKey("console_state", ConsoleState)
SESSION = web.RequestKey("console_session", Session)
USER = web.RequestKey("console_user", str)
"""Who made the request: the session's user, or ``api`` for the bearer token."""


def wants_json(request: web.Request) -> bool:
    """API paths, and requests that ask for JSON (the page's own fetch calls)."""
    accept = request.headers.get("Accept", "")
    return request.path.startswith("/api/") or "application/json" in accept


def render(
    request: web.Request, template: str, *, status: int = 200, **context: object
) -> web.Response:
    """A page from ``templates/`` (autoescaped), with the session's CSRF token and user."""
    state = request.app[STATE]
    session = request.get(SESSION)
    text = state.templates.get_template(template).render(
        csrf=session.csrf if session else "",
        user=session.user if session else "",
        path=request.path,
        **context,
    )
    return web.Response(text=text, status=status, content_type="text/html", charset="utf-8")


def _client_id(request: web.Request) -> str:
    # Rate limits key on the TCP peer: X-Forwarded-For would let a client pick its own key.
    return request.remote or "unknown"


def _same_origin(request: web.Request) -> bool:
    return origin_allowed(request.headers.get("Origin"), request.host, request.scheme)


def _foreign_origin(request: web.Request) -> bool:
    # Under "Referrer-Policy: no-referrer" browsers send "Origin: null" with same-origin form
    # posts and fetches: that says nothing, so the CSRF token must decide.
    origin = request.headers.get("Origin")
    return origin not in (None, "null") and not _same_origin(request)


def _csrf_ok(request: web.Request, session: Session, form: Mapping[str, Any] | None) -> bool:
    if _foreign_origin(request):
        return False  # a foreign Origin is refused whatever else it sends
    if _same_origin(request):
        return True
    token = request.headers.get("X-CSRF-Token") or (form or {}).get("csrf") or ""
    return isinstance(token, str) and constant_time_equal(token, session.csrf)


Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


@web.middleware
async def _auth(request: web.Request, handler: Handler) -> web.StreamResponse:
    if request.path == "/login" or request.path.startswith("/static/"):
        return await handler(request)
    state = request.app[STATE]
    session = state.sessions.get(request.cookies.get(SESSION_COOKIE))
    if session is None:
        header = request.headers.get("Authorization", "")
        token = state.settings.api_token
        if (
            token
            and request.path.startswith("/api/")
            and header.startswith("Bearer ")
            and constant_time_equal(header.removeprefix("Bearer "), token)
        ):
            request[USER] = "api"
            return await handler(request)
        if wants_json(request):
            raise web.HTTPUnauthorized(
                text='{"error": "login required"}', content_type="application/json"
            )
        if request.method in _SAFE_METHODS:
            raise web.HTTPSeeOther("/login?next=" + quote(request.path_qs, safe="/?=&"))
        raise web.HTTPUnauthorized(text="login required")
    if request.method not in _SAFE_METHODS:
        form = await request.post() if request.content_type.endswith("form-urlencoded") else None
        if not _csrf_ok(request, session, form):
            raise web.HTTPForbidden(text="cross-site request refused")
    request[SESSION] = session
    request[USER] = session.user
    return await handler(request)


async def _security_headers(request: web.Request, response: web.StreamResponse) -> None:
    for name, value in _HEADERS.items():
        response.headers.setdefault(name, value)
    if not request.path.startswith("/static/"):
        response.headers.setdefault("Cache-Control", "no-store")


def _safe_next(target: str | None) -> str:
    # Only local paths: "//host" or "/\\host" would be an open redirect.
    if not target or not target.startswith("/") or target.startswith(("//", "/\\")):
        return "/"
    return target


async def _login_page(request: web.Request) -> web.Response:
    return render(request, "login.html", next=_safe_next(request.query.get("next")), error="")


async def _login(request: web.Request) -> web.Response:
    state = request.app[STATE]
    if _foreign_origin(request):
        raise web.HTTPForbidden(text="cross-site request refused")
    client = _client_id(request)
    form = await request.post()
    next_path = _safe_next(str(form.get("next", "")))
    wait_s = state.limiter.blocked(client)
    if wait_s > 0:
        response = render(
            request,
            "login.html",
            status=429,
            next=next_path,
            error=f"Too many failed logins. Try again in {int(wait_s) + 1} s.",
        )
        response.headers["Retry-After"] = str(int(wait_s) + 1)
        return response
    password = form.get("password")
    if not isinstance(password, str) or not constant_time_equal(password, state.settings.password):
        state.limiter.failed(client)
        logger.warning("console: failed login from %s", client)
        return render(request, "login.html", status=401, next=next_path, error="Wrong password.")
    state.limiter.succeeded(client)
    name = str(form.get("name", "")).strip() or "operator"
    session = state.sessions.create(name if _USER.match(name) else "operator")
    response = web.Response(status=303, headers={"Location": next_path})
    secure = request.secure or request.headers.get("X-Forwarded-Proto") == "https"
    response.set_cookie(
        SESSION_COOKIE, session.token, httponly=True, samesite="Strict", secure=secure, path="/"
    )
    logger.info("console: %s logged in from %s", session.user, client)
    return response


async def _logout(request: web.Request) -> web.Response:
    state = request.app[STATE]
    state.sessions.drop(request.cookies.get(SESSION_COOKIE))
    response = web.Response(status=303, headers={"Location": "/login"})
    response.del_cookie(SESSION_COOKIE, path="/")
    return response


def _open_store(state: ConsoleState) -> None:
    """Open (and migrate: a fresh deployment has no tables yet) the store; seed the latency
    panel from its latest records. Runs in a thread: the store's API is synchronous."""
    try:
        store = RecordStore(state.settings.store_url)
        store.migrate()
    except StoreError as err:
        state.store_error = str(err)
        logger.warning("console: call store unavailable: %s", err)
        return
    state.store = store
    try:
        from worker.records.store import RecordQuery

        for summary in reversed(store.search(RecordQuery(limit=_SEED_RECORDS))):
            record = store.get(summary.call_id)
            for turn in record.turns if record else ():
                if turn.role == "agent":
                    state.stats.add(turn.latency)
    except StoreError as err:
        logger.warning("console: could not read recent records: %s", err)


async def _watch_replies(state: ConsoleState) -> None:
    """Feed the latency panel from every ``agent_turn`` the agents publish."""
    async for event in state.feed.subscribe():
        if event.get("type") == "agent_turn":
            state.stats.add(event.get("latency"))


async def _lifecycle(app: web.Application) -> AsyncIterator[None]:
    state = app[STATE]
    state.http = aiohttp.ClientSession(trust_env=False)
    if state.store is None:
        await asyncio.to_thread(_open_store, state)
    state.tasks.append(asyncio.create_task(_watch_replies(state), name="console-replies"))
    try:
        yield
    finally:
        for task in state.tasks:
            task.cancel()
        await asyncio.gather(*state.tasks, return_exceptions=True)
        await state.feed.aclose()
        await state.http.close()
        if state.store is not None:
            with contextlib.suppress(StoreError):
                await asyncio.to_thread(state.store.close)


def create_app(
    settings: ConsoleSettings,
    *,
    store: RecordStore | None = None,
    feed: LiveFeed | None = None,
) -> web.Application:
    """The console application (``store``/``feed`` default to the settings' URLs)."""
    from worker.console import api, pages  # the route modules import this one

    templates = jinja2.Environment(
        loader=jinja2.FileSystemLoader(_PACKAGE / "templates"),
        autoescape=True,
        undefined=jinja2.StrictUndefined,
    )
    state = ConsoleState(
        settings=settings,
        templates=templates,
        sessions=SessionTable(idle_s=settings.session_idle_s, max_age_s=settings.session_max_age_s),
        limiter=LoginLimiter(settings.login_attempts, settings.login_window_s),
        feed=feed or LiveFeed(settings.redis_url),
        stats=LatencyStats(),
        store=store,
    )
    app = web.Application(middlewares=[_auth], client_max_size=64 * 1024)
    app[STATE] = state
    app.on_response_prepare.append(_security_headers)
    app.cleanup_ctx.append(_lifecycle)
    app.router.add_get("/login", _login_page)
    app.router.add_post("/login", _login)
    app.router.add_post("/logout", _logout)
    app.router.add_static("/static", _PACKAGE / "static")
    pages.add_routes(app)
    api.add_routes(app)
    return app
