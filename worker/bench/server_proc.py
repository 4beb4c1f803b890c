"""Start the inference server as a subprocess for one scheduling mode, and stop it again.

The server gets a temporary copy of the base configuration with ``scheduler.mode`` set, a free
loopback port, and its own log file; the benchmark waits for ``GET /readyz`` before it sends
anything, and a server that dies or never gets ready is reported with the tail of its log.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import socket
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any, get_args

import aiohttp
import yaml

from worker.config.loader import ConfigError

__all__ = ["InferenceServerProcess", "ServerStartError", "mode_section", "write_mode_config"]

log = logging.getLogger(__name__)


class ServerStartError(RuntimeError):
    """The inference server did not become ready; the message includes its log tail."""


def mode_section() -> str:
    """The top-level key of the inference config whose section holds the scheduling ``mode``.

    Found from the server's own config model (the section whose model has a ``mode`` field),
    so the benchmark follows the server's naming instead of guessing it.
    """
    from pydantic import BaseModel

    from worker.config.inference import InferenceConfig

    for name, info in InferenceConfig.model_fields.items():
        kind = info.annotation
        if isinstance(kind, type) and issubclass(kind, BaseModel) and "mode" in kind.model_fields:
            return name
    raise ConfigError(
        "the inference server's configuration has no scheduling mode switch (a section with a "
        "`mode` key such as `scheduler: {mode: serial}`), so the benchmark cannot compare "
        "the scheduler with the serial baseline"
    )


def write_mode_config(base: Path, mode: str, dest: Path) -> Path:
    """Copy the YAML config ``base`` to ``dest`` with the scheduling section's ``mode`` set
    (see :func:`mode_section`), and validate the copy with the server's own config model so a
    mismatch is a clear :class:`ConfigError` here rather than a crash in the subprocess."""
    from worker.config.inference import load_inference_config

    section = mode_section()

    try:
        data: Any = yaml.safe_load(base.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{base}: configuration file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{base}: not valid YAML: {err}") from None
    if data is None:
        data = {}
    if not isinstance(data, dict):
        raise ConfigError(f"{base}: expected a mapping at the top level")
    scheduler = data.get(section) or {}
    if not isinstance(scheduler, dict):
        raise ConfigError(f"{base}: {section}: expected a mapping")
    data[section] = {**scheduler, "mode": mode}
    models = data.get("models")
    if models is None:
        models = data["models"] = {}
    if not isinstance(models, dict):
        raise ConfigError(f"{base}: models: expected a mapping")
    _absolutize_model_paths(models, base.resolve().parent)
    dest.parent.mkdir(parents=True, exist_ok=True)
    dest.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
    try:
        load_inference_config(dest)
    except ConfigError as err:
        raise ConfigError(
            f"scheduling mode {mode!r} via {base} (copied to {dest}) is not accepted by the "
            f"inference server's configuration: {err}"
        ) from None
    return dest


def _absolutize_model_paths(models: dict[str, Any], base_dir: Path) -> None:
    """Relative model paths are relative to the config file, which the copy leaves behind: make
    every path field of the models section absolute, defaults included (``dir`` defaults to a
    relative path). Which keys are paths comes from the server's own model, so names such as
    ``set`` stay as they are."""
    from worker.config.inference import ModelsConfig

    for name, field in ModelsConfig.model_fields.items():
        key = field.alias or name
        if Path not in (field.annotation, *get_args(field.annotation)):
            continue
        value = models.get(key, field.default)
        if value is None:
            continue
        path = Path(value)
        if not path.is_absolute():
            models[key] = str((base_dir / path).resolve())


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _tail(path: Path, lines: int = 30) -> str:
    try:
        return "\n".join(path.read_text(encoding="utf-8", errors="replace").splitlines()[-lines:])
    except OSError:
        return "(no log)"


def server_argv(config: Path, port: int) -> list[str]:
    """The command line of ``voicestack inference-server`` on loopback ``port``."""
    return [
        sys.executable, "-m", "worker.cli", "inference-server",
        "--config", str(config), "--host", "127.0.0.1", "--port", str(port),
    ]  # fmt: skip


class InferenceServerProcess:
    """``voicestack inference-server`` in a subprocess; an async context manager.

    ``argv(config, port)`` builds the command line (default :func:`server_argv`).
    """

    def __init__(
        self,
        config: Path,
        log_path: Path,
        *,
        startup_timeout_s: float = 180.0,
        tries: int = 3,
        argv: Callable[[Path, int], list[str]] | None = None,
    ) -> None:
        self.config = config
        self.log_path = log_path
        self.startup_timeout_s = startup_timeout_s
        self.tries = tries
        self.port = 0
        self._argv = argv or server_argv
        self._proc: asyncio.subprocess.Process | None = None

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}"

    @property
    def stream_url(self) -> str:
        return f"ws://127.0.0.1:{self.port}/v1/stream"

    async def __aenter__(self) -> InferenceServerProcess:
        await self.start()
        return self

    async def __aexit__(self, *exc: object) -> None:
        await self.stop()

    async def start(self) -> None:
        """Start the server and wait until ``/readyz`` answers 200."""
        for attempt in range(1, self.tries + 1):
            self.port = _free_port()
            await self._spawn()
            try:
                await self._wait_ready()
                return
            except ServerStartError:
                await self.stop()
                # The port was free when picked but another process may have taken it since.
                lost_race = "address already in use" in _tail(self.log_path).lower()
                if not lost_race or attempt == self.tries:
                    raise

    async def _spawn(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        env = {**os.environ, "HF_HUB_OFFLINE": "1"}
        cmd = self._argv(self.config, self.port)
        log.info("starting inference server: %s", " ".join(cmd))
        with self.log_path.open("ab") as logfile:
            self._proc = await asyncio.create_subprocess_exec(
                *cmd,
                stdin=asyncio.subprocess.DEVNULL,
                stdout=logfile,
                stderr=asyncio.subprocess.STDOUT,
                env=env,
                start_new_session=True,  # our Ctrl-C is handled by us, not sent to it directly
            )

    async def _wait_ready(self) -> None:
        assert self._proc is not None
        deadline = time.monotonic() + self.startup_timeout_s
        async with aiohttp.ClientSession() as session:
            while True:
                if self._proc.returncode is not None:
                    raise ServerStartError(
                        f"inference server exited with status {self._proc.returncode} before it "
                        f"was ready; log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                try:
                    timeout = aiohttp.ClientTimeout(total=2)
                    async with session.get(f"{self.base_url}/readyz", timeout=timeout) as resp:
                        if resp.status == 200:
                            return
                except (aiohttp.ClientError, TimeoutError):
                    pass
                if time.monotonic() >= deadline:
                    raise ServerStartError(
                        f"inference server not ready after {self.startup_timeout_s:.0f} s; "
                        f"log {self.log_path}:\n{_tail(self.log_path)}"
                    )
                await asyncio.sleep(0.25)

    async def stop(self, grace_s: float = 15.0) -> None:
        """SIGTERM, then SIGKILL after ``grace_s``; always reaps the process."""
        proc, self._proc = self._proc, None
        if proc is None or proc.returncode is not None:
            return
        proc.send_signal(signal.SIGTERM)
        try:
            await asyncio.wait_for(proc.wait(), grace_s)
        except TimeoutError:
            log.warning("inference server did not stop in %.0f s; killing it", grace_s)
            proc.kill()
            await proc.wait()
        except asyncio.CancelledError:
            proc.kill()  # we are being torn down: do not leave the server behind
            raise
