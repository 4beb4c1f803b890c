"""The inference server's shared token: /v1/* refused without it, probes open, no start beyond
loopback without one; the agent's client sends it on every stream and probe."""

from __future__ import annotations

from pathlib import Path

import aiohttp
import pytest
from aiohttp import web
from local_http import serve_app

from worker.agent.plugins._client import InferenceClient, get_json
from worker.inference.auth import MIN_TOKEN_CHARS, bind_problem, token_middleware
from worker.inference.protocol import TOKEN_ENV
from worker.stack.render import project_root

TOKEN = "t" * MIN_TOKEN_CHARS


@pytest.mark.parametrize(
    ("host", "token", "why"),
    [
        ("0.0.0.0", None, "needs VOICESTACK_INFERENCE_TOKEN"),
        ("10.0.0.5", None, "needs VOICESTACK_INFERENCE_TOKEN"),
        ("127.0.0.1", "short", "at least 24"),
    ],
)
def test_bind_problems(host: str, token: str | None, why: str) -> None:
    problem = bind_problem(host, token)
    assert problem is not None and why in problem


@pytest.mark.parametrize(
    ("host", "token"), [("127.0.0.1", None), ("::1", None), ("0.0.0.0", TOKEN)]
)
def test_safe_binds(host: str, token: str | None) -> None:
    assert bind_problem(host, token) is None


def _app() -> web.Application:
    async def capacity(_: web.Request) -> web.Response:
        return web.json_response({"accepting": True, "load": 0.0})

    async def healthz(_: web.Request) -> web.Response:
        return web.json_response({"ok": True})

    async def stream(request: web.Request) -> web.WebSocketResponse:
        ws = web.WebSocketResponse()
        await ws.prepare(request)
        await ws.receive()  # the start frame
        await ws.send_json({"type": "done"})
        await ws.close()
        return ws

    app = web.Application(middlewares=[token_middleware(TOKEN)])
    app.router.add_get("/healthz", healthz)
    app.router.add_get("/v1/capacity", capacity)
    app.router.add_get("/v1/stream", stream)
    return app


async def test_v1_needs_the_token_and_probes_stay_open() -> None:
    async with serve_app(_app()) as url, aiohttp.ClientSession() as http:
        for headers in ({}, {"Authorization": "Bearer wrong"}, {"Authorization": TOKEN}):
            async with http.get(url + "/v1/capacity", headers=headers) as resp:
                assert resp.status == 401
                assert (await resp.json())["code"] == "unauthorized"
        ok = {"Authorization": f"Bearer {TOKEN}"}
        async with http.get(url + "/v1/capacity", headers=ok) as resp:
            assert resp.status == 200
        async with http.get(url + "/healthz") as resp:
            assert resp.status == 200


async def test_the_agent_client_sends_the_token(monkeypatch: pytest.MonkeyPatch) -> None:
    async with serve_app(_app()) as url:
        monkeypatch.delenv(TOKEN_ENV, raising=False)
        assert (await get_json(url, "/v1/capacity", timeout_s=5))[0] == 401
        monkeypatch.setenv(TOKEN_ENV, TOKEN)
        assert (await get_json(url, "/v1/capacity", timeout_s=5))[0] == 200
        client = InferenceClient(url)
        stream = await client.open({"op": "tts", "call_id": "c"})
        async with stream:
            kinds = [m.data.get("type") async for m in stream.messages() if m.data]
        await client.aclose()
        assert kinds == ["done"]


def test_server_refuses_to_listen_beyond_loopback_without_a_token(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from worker.cli import main

    monkeypatch.delenv(TOKEN_ENV, raising=False)
    config = str(Path(project_root()) / "config" / "inference.yaml")
    assert main(["inference-server", "--config", config, "--host", "0.0.0.0"]) == 2
    assert "needs VOICESTACK_INFERENCE_TOKEN" in capsys.readouterr().err
