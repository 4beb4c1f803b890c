"""The console's access control: password, rate limit, sessions, CSRF, token, headers, files."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from aiohttp import web
from aiohttp.test_utils import TestClient, TestServer
from console_support import PASSWORD, dead_redis_url, sample_record, settings

from worker.cli import main
from worker.console.app import create_app
from worker.console.auth import (
    SESSION_COOKIE,
    LoginLimiter,
    SessionTable,
    constant_time_equal,
    secrets_from_env,
)
from worker.console.auth import AuthError as ConsoleAuthError
from worker.console.pages import recording_path
from worker.records.record import Recording
from worker.records.store import RecordStore

ROOT = Path(__file__).resolve().parents[2]


async def _client(tmp_path: Path, **overrides: Any) -> TestClient[web.Request, web.Application]:
    app = create_app(settings(tmp_path, dead_redis_url(), **overrides))
    client = TestClient(TestServer(app))
    await client.start_server()
    return client


@pytest.fixture
async def client(tmp_path: Path) -> AsyncIterator[TestClient[web.Request, web.Application]]:
    c = await _client(tmp_path)
    yield c
    await c.close()


async def _login(client: TestClient[web.Request, web.Application]) -> str:
    resp = await client.post(
        "/login", data={"password": PASSWORD, "name": "alice", "next": "/"}, allow_redirects=False
    )
    assert resp.status == 303, await resp.text()
    cookie = resp.cookies[SESSION_COOKIE]
    assert cookie["httponly"] and cookie["samesite"] == "Strict"
    page = await client.get("/")
    text = await page.text()
    return text.split('name="csrf-token" content="')[1].split('"')[0]


@pytest.mark.parametrize("password", [None, "", "short-pass"])
def test_the_console_refuses_to_start_without_a_strong_password(
    password: str | None, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    if password is None:
        monkeypatch.delenv("VOICESTACK_CONSOLE_PASSWORD", raising=False)
    else:
        monkeypatch.setenv("VOICESTACK_CONSOLE_PASSWORD", password)
    status = main(["console", "--config", str(ROOT / "config" / "agent.yaml")])
    assert status == 2
    err = capsys.readouterr().err
    assert "refusing to start" in err and "VOICESTACK_CONSOLE_PASSWORD" in err
    with pytest.raises(ConsoleAuthError):
        secrets_from_env({"VOICESTACK_CONSOLE_PASSWORD": password or ""})


def test_secrets_and_comparison() -> None:
    assert secrets_from_env({"VOICESTACK_CONSOLE_PASSWORD": PASSWORD}) == (PASSWORD, None)
    assert constant_time_equal(PASSWORD, PASSWORD)
    assert not constant_time_equal(PASSWORD[:-1], PASSWORD)
    assert not constant_time_equal("", PASSWORD)


async def test_pages_need_a_login(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/calls?text=x", allow_redirects=False)
    assert resp.status == 303 and resp.headers["Location"].startswith("/login?next=/calls")
    resp = await client.get("/api/live")
    assert resp.status == 401
    resp = await client.get("/events", headers={"Accept": "text/event-stream"})
    assert resp.status in (303, 200) and "Log in" in await resp.text()
    resp = await client.post("/calls/c1/end", allow_redirects=False)
    assert resp.status == 401


async def test_wrong_password_is_refused_and_rate_limited(
    client: TestClient[web.Request, web.Application],
) -> None:
    for _ in range(5):
        resp = await client.post("/login", data={"password": "wrong password!"})
        assert resp.status == 401
        assert "Wrong password" in await resp.text()
    resp = await client.post("/login", data={"password": "wrong password!"})
    assert resp.status == 429 and int(resp.headers["Retry-After"]) > 0
    # While blocked even the right password is refused: no guessing through the limit.
    resp = await client.post("/login", data={"password": PASSWORD}, allow_redirects=False)
    assert resp.status == 429


def test_limiter_window_and_bound() -> None:
    limiter = LoginLimiter(attempts=2, window_s=60, max_clients=3)
    limiter.failed("a", now=0)
    assert limiter.blocked("a", now=1) == 0
    limiter.failed("a", now=1)
    assert limiter.blocked("a", now=2) == pytest.approx(58)
    assert limiter.blocked("a", now=61) == 0  # the window moved on
    for name in "bcde":
        limiter.failed(name, now=2)
    assert len(limiter._failures) == 3  # bounded


async def test_login_logout_and_open_redirects(
    client: TestClient[web.Request, web.Application],
) -> None:
    resp = await client.post(
        "/login", data={"password": PASSWORD, "next": "//evil.example/"}, allow_redirects=False
    )
    assert resp.status == 303 and resp.headers["Location"] == "/"
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 200 and "Live calls" in await resp.text()
    text = await resp.text()
    csrf = text.split('name="csrf-token" content="')[1].split('"')[0]
    resp = await client.post("/logout", data={"csrf": csrf}, allow_redirects=False)
    assert resp.status == 303
    resp = await client.get("/", allow_redirects=False)
    assert resp.status == 303


def test_sessions_expire_and_are_bounded() -> None:
    table = SessionTable(idle_s=10, max_age_s=100, max_sessions=2)
    s = table.create("alice", now=0)
    assert table.get(s.token, now=9) is s
    assert table.get(s.token, now=18) is s  # idle timer restarted at 9
    assert table.get(s.token, now=29) is None  # idle too long: gone
    s = table.create("bob", now=0)
    for t in range(5, 100, 5):
        assert table.get(s.token, now=t) is s
    assert table.get(s.token, now=101) is None  # absolute age
    first = table.create("a", now=0)
    table.create("b", now=0)
    table.create("c", now=0)
    assert len(table) == 2 and table.get(first.token, now=1) is None


async def test_an_expired_session_logs_out(tmp_path: Path) -> None:
    client = await _client(tmp_path, session_idle_s=0.3)
    try:
        await _login(client)
        assert (await client.get("/", allow_redirects=False)).status == 200
        await asyncio.sleep(0.5)
        resp = await client.get("/", allow_redirects=False)
        assert resp.status == 303 and resp.headers["Location"].startswith("/login")
    finally:
        await client.close()


async def test_posts_need_same_origin_or_the_csrf_token(
    client: TestClient[web.Request, web.Application],
) -> None:
    csrf = await _login(client)
    evil = {"Origin": "http://evil.example", "Accept": "application/json"}
    resp = await client.post("/calls/c1/end", headers=evil, data={"csrf": csrf})
    assert resp.status == 403  # a foreign origin is refused even with the token
    resp = await client.post("/calls/c1/end", headers={"Accept": "application/json"})
    assert resp.status == 403  # no origin, no token
    resp = await client.post(
        "/calls/c1/end", headers={"Accept": "application/json"}, data={"csrf": "forged"}
    )
    assert resp.status == 403
    resp = await client.post(
        "/calls/c1/end", headers={"Accept": "application/json", "X-CSRF-Token": csrf}
    )
    assert resp.status == 200
    body = await resp.json()
    # Redis is down: no agent can answer, and without LiveKit credentials no room is deleted.
    assert body["ok"] is False and body["detail"].startswith("no agent answered;")
    assert "not configured" in body["detail"]
    origin = f"http://{client.host}:{client.port}"
    resp = await client.post(
        "/calls/c1/transfer",
        headers={"Origin": origin, "Accept": "application/json"},
        data={"target": "sip:anything@evil.example"},
    )
    assert resp.status == 400  # only listed targets


async def test_api_token(client: TestClient[web.Request, web.Application]) -> None:
    resp = await client.get("/api/stats", headers={"Authorization": "Bearer api-token-0123456789"})
    assert resp.status == 200 and (await resp.json())["turns"] == 0
    resp = await client.get("/api/stats", headers={"Authorization": "Bearer wrong-token-12345"})
    assert resp.status == 401
    resp = await client.get(
        "/", headers={"Authorization": "Bearer api-token-0123456789"}, allow_redirects=False
    )
    assert resp.status == 303  # the token opens the JSON API only
    resp = await client.get(
        "/api/capacity", headers={"Authorization": "Bearer api-token-0123456789"}
    )
    body = await resp.json()
    assert body["ok"] is False and body["error"].startswith("unreachable")


async def test_security_headers_everywhere(
    client: TestClient[web.Request, web.Application],
) -> None:
    for path in ("/login", "/static/console.css", "/nope"):
        resp = await client.get(path, allow_redirects=False)
        assert resp.headers["Content-Security-Policy"].startswith("default-src 'self'"), path
        assert resp.headers["X-Frame-Options"] == "DENY"
        assert resp.headers["Referrer-Policy"] == "no-referrer"


def test_recording_paths_stay_inside_the_recordings_dir(tmp_path: Path) -> None:
    base = tmp_path / "audio"
    (base / "2026").mkdir(parents=True)
    (base / "2026" / "c1.ogg").write_bytes(b"OggS")
    (tmp_path / "secret.txt").write_text("secret")
    assert recording_path(base, "2026/c1.ogg") == (base / "2026" / "c1.ogg").resolve()
    for bad in ("../secret.txt", "2026/../../secret.txt", str(tmp_path / "secret.txt"), ""):
        assert recording_path(base, bad) is None, bad
    (base / "link.ogg").symlink_to(tmp_path / "secret.txt")
    assert recording_path(base, "link.ogg") is None


async def test_recording_route_refuses_traversal_and_escapes_data(
    client: TestClient[web.Request, web.Application], tmp_path: Path
) -> None:
    await _login(client)
    (tmp_path / "secret.ogg").write_bytes(b"not yours")
    (tmp_path / "audio" / "good.ogg").write_bytes(b"OggS-audio")
    recording = {"format": "ogg", "sha256": "0" * 64, "bytes": 10, "duration_s": 1.0}
    store = RecordStore(f"sqlite:///{tmp_path / 'records.db'}")
    bad = sample_record("call-bad", text="<script>alert(1)</script>")
    bad = bad.model_copy(update={"recording": Recording(path="../secret.ogg", **recording)})
    good = sample_record("call-good").model_copy(
        update={"recording": Recording(path="good.ogg", **recording)}
    )
    await asyncio.to_thread(store.save, bad)
    await asyncio.to_thread(store.save, good)
    await asyncio.to_thread(store.close)
    resp = await client.get("/calls/call-bad/recording")
    assert resp.status == 404 and b"not yours" not in await resp.read()
    resp = await client.get("/calls/call-good/recording")
    assert resp.status == 200 and await resp.read() == b"OggS-audio"
    assert resp.headers["Content-Type"] == "audio/ogg"
    page = await (await client.get("/calls/call-bad")).text()
    assert "<script>alert(1)</script>" not in page and "&lt;script&gt;" in page
    assert '<svg class="latency-chart"' in page and "<audio controls" in page
    resp = await client.get("/calls/..%2F..%2Fetc%2Fpasswd")
    assert resp.status == 404
