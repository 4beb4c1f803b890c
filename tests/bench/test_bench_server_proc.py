"""The server subprocess manager with stand-in commands (no models): readiness, a server that
dies at start, one that never gets ready, and the temp config's validation."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from worker.bench.server_proc import (
    InferenceServerProcess,
    ServerStartError,
    mode_section,
    write_mode_config,
)
from worker.config.inference import load_inference_config
from worker.config.loader import ConfigError

# A stand-in server: answers /readyz 200 on the given port after a short "model load".
READY_SERVER = """
import asyncio, sys
from aiohttp import web
async def main():
    await asyncio.sleep(0.3)
    app = web.Application()
    app.router.add_get("/readyz", lambda r: web.Response(text="ok"))
    runner = web.AppRunner(app)
    await runner.setup()
    await web.TCPSite(runner, "127.0.0.1", int(sys.argv[1])).start()
    print("ready", flush=True)
    await asyncio.Event().wait()
asyncio.run(main())
"""


def argv_for(code: str) -> Callable[[Path, int], list[str]]:
    def argv(config: Path, port: int) -> list[str]:
        return [sys.executable, "-c", code, str(port)]

    return argv


async def test_starts_waits_for_readyz_and_stops(tmp_path: Path) -> None:
    log = tmp_path / "server.log"
    proc = InferenceServerProcess(tmp_path / "c.yaml", log, argv=argv_for(READY_SERVER))
    async with proc:
        assert proc.port > 0
        assert proc.stream_url == f"ws://127.0.0.1:{proc.port}/v1/stream"
        inner = proc._proc
        assert inner is not None and inner.returncode is None
    assert inner.returncode is not None, "stopped and reaped"
    assert "ready" in log.read_text()


async def test_server_that_exits_reports_status_and_log(tmp_path: Path) -> None:
    code = "import sys; print('cannot load model xyz', flush=True); sys.exit(3)"
    proc = InferenceServerProcess(tmp_path / "c.yaml", tmp_path / "s.log", argv=argv_for(code))
    with pytest.raises(ServerStartError, match=r"status 3(.|\n)*cannot load model xyz"):
        await proc.start()


async def test_server_never_ready_times_out_and_is_stopped(tmp_path: Path) -> None:
    code = "import time; time.sleep(60)"
    proc = InferenceServerProcess(
        tmp_path / "c.yaml",
        tmp_path / "s.log",
        argv=argv_for(code),
        startup_timeout_s=1.0,
    )
    t = time.monotonic()
    with pytest.raises(ServerStartError, match="not ready after 1 s"):
        await proc.start()
    assert time.monotonic() - t < 30
    assert proc._proc is None, "the stuck process was stopped"


def test_mode_config_copy_sets_mode_and_absolute_model_paths(tmp_path: Path) -> None:
    base = tmp_path / "conf" / "inference.yaml"
    base.parent.mkdir()
    root = Path(__file__).resolve().parents[2]
    text = (root / "config" / "inference.yaml").read_text()
    base.write_text(text)
    dest = write_mode_config(base, "serial", tmp_path / "run" / "serial.yaml")
    data = yaml.safe_load(dest.read_text())
    assert data[mode_section()]["mode"] == "serial"
    config, _ = load_inference_config(dest)
    assert config.scheduler.mode == "serial"


def test_mode_config_rejects_unknown_mode_with_the_servers_message(tmp_path: Path) -> None:
    base = tmp_path / "inference.yaml"
    base.write_text("device: cpu\n")
    with pytest.raises(ConfigError, match=r"mode 'turbo'(.|\n)*mode"):
        write_mode_config(base, "turbo", tmp_path / "out.yaml")


def test_mode_config_reports_a_broken_base(tmp_path: Path) -> None:
    base = tmp_path / "inference.yaml"
    base.write_text("device: [cpu\n")
    with pytest.raises(ConfigError, match="not valid YAML"):
        write_mode_config(base, "serial", tmp_path / "out.yaml")
    with pytest.raises(ConfigError, match="not found"):
        write_mode_config(tmp_path / "missing.yaml", "serial", tmp_path / "out.yaml")


def test_mode_config_copy_keeps_set_names_and_resolves_relative_paths(tmp_path: Path) -> None:
    """Only the models section's path fields move with the copy; a set name is not a path, and
    the relative ``dir`` default still points where it did from the original file."""
    base = tmp_path / "conf" / "inference.yaml"
    base.parent.mkdir()
    base.write_text("models:\n  set: bundled\n", encoding="utf-8")
    dest = write_mode_config(base, "serial", tmp_path / "elsewhere" / "inference.yaml")
    models = yaml.safe_load(dest.read_text(encoding="utf-8"))["models"]
    assert models["set"] == "bundled"
    assert models["dir"] == str((tmp_path / "models").resolve())
    _cfg, resolved = load_inference_config(dest)
    assert resolved.set_name == "bundled"
