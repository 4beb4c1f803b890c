"""Startup failures are clear: a broken model file, a bad config, readiness before loading."""

from __future__ import annotations

import argparse
import asyncio
from pathlib import Path

import aiohttp
import pytest
from aiohttp import WSCloseCode
from aiohttp.test_utils import make_mocked_request

from worker.config.inference import InferenceConfig, ResolvedModels
from worker.inference import cli
from worker.inference.background import serve_in_thread
from worker.inference.protocol import ErrorCode, StreamError
from worker.inference.server import InferenceServer


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    cli.register(parser.add_subparsers(dest="command", required=True))
    return parser.parse_args(argv)


async def test_not_ready_before_the_models_load(models: ResolvedModels) -> None:
    server = InferenceServer(InferenceConfig(port=0), models)  # engines not started
    response = await server.readyz(make_mocked_request("GET", "/readyz"))
    assert response.status == 503
    assert response.text is not None and "loading" in response.text
    with pytest.raises(StreamError) as info:
        server._admit("llm")
    assert info.value.code == ErrorCode.NOT_READY
    assert server.capacity()["accepting"] is False


@pytest.mark.integration
def test_a_broken_model_file_fails_startup_with_the_reason(
    models: ResolvedModels, tmp_path: Path
) -> None:
    junk = tmp_path / "broken.gguf"
    junk.write_bytes(b"this is not a gguf file" * 100)
    broken = ResolvedModels(stt_dir=models.stt_dir, llm_gguf=junk, tts_onnx=models.tts_onnx)
    with (
        pytest.raises(RuntimeError, match="llm engine failed to load"),
        serve_in_thread(InferenceConfig(port=0), broken),
    ):
        pass


def test_cli_refuses_a_bad_config_with_exit_status_2(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = tmp_path / "inference.yaml"
    bad.write_text("device: tpu\n")
    args = _parse(["inference-server", "--config", str(bad)])
    assert args.func(args) == 2
    assert "device" in capsys.readouterr().err


def test_cli_refuses_a_missing_config(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    args = _parse(["inference-server", "--config", str(tmp_path / "nope.yaml")])
    assert args.func(args) == 2
    assert "not found" in capsys.readouterr().err


@pytest.mark.integration
async def test_shutdown_closes_open_streams_as_going_away(models: ResolvedModels) -> None:
    story = [{"role": "user", "content": "Tell me a long story about a dragon."}]
    with serve_in_thread(InferenceConfig(port=0), models) as running:
        async with aiohttp.ClientSession() as session:
            ws = await session.ws_connect(running.ws_url)
            await ws.send_json({"op": "llm", "call_id": "t", "messages": story, "max_tokens": 400})
            assert (await ws.receive_json(timeout=60))["type"] == "token"
            running.request_stop()  # shut down while the stream is still open
            async with asyncio.timeout(30):
                async for _msg in ws:
                    pass
            assert ws.close_code == WSCloseCode.GOING_AWAY
