"""The image entry point and its helpers, run here as the containers would run them."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import yaml

ROOT = Path(__file__).resolve().parents[2]
ENTRYPOINT = ROOT / "docker" / "entrypoint.sh"

PROD_ENV = {
    "LIVEKIT_API_KEY": "APIprodkey",
    "LIVEKIT_API_SECRET": "s" * 40,
    "LIVEKIT_BIND_ADDRESS": "10.1.2.3",
    "LIVEKIT_NODE_IP": "10.1.2.3",
    "LIVEKIT_STUN_SERVER": "10.1.2.3:3478",
    "LIVEKIT_WS_URL": "ws://10.1.2.3:7880",
    "REDIS_ADDRESS": "127.0.0.1:6379",
    "REDIS_PASSWORD": "redis-password-for-the-test",
    "SIP_LISTEN_IP": "10.1.2.3",
    "SIP_NAT_IP": "10.1.2.3",
    "PBX_ADDRESS": "10.1.2.4/32",
    "PBX_NUMBER": "+15550100",
}


def _env(**extra: str) -> dict[str, str]:
    path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}"
    return {**os.environ, "PATH": path, "PYTHONPATH": str(ROOT), "HF_HUB_OFFLINE": "1", **extra}


def _run(args: list[str], env: dict[str, str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        args, capture_output=True, text=True, env=env, timeout=120, check=False, cwd=ROOT
    )


def test_render_fills_the_shipped_configs_without_writing_keys(tmp_path: Path) -> None:
    out = tmp_path / "rendered"
    result = _run(
        [sys.executable, str(ROOT / "docker/render_configs.py"), "--root", str(ROOT), str(out)],
        _env(**PROD_ENV),
    )
    assert result.returncode == 0, result.stderr
    livekit = yaml.safe_load((out / "livekit-server.yaml").read_text(encoding="utf-8"))
    sip = yaml.safe_load((out / "sip-config.yaml").read_text(encoding="utf-8"))
    assert livekit["bind_addresses"] == ["10.1.2.3"]
    assert livekit["rtc"]["use_external_ip"] is False
    assert sip["nat_1_to_1_ip"] == "10.1.2.3"
    assert livekit["redis"]["password"] == "redis-password-for-the-test"
    # Every rendered file (the redis/ data directory for its append-only file is no config).
    text = "".join(p.read_text(encoding="utf-8") for p in out.iterdir() if p.is_file())
    assert "${" not in text
    assert PROD_ENV["LIVEKIT_API_SECRET"] not in text  # keys travel by environment only
    assert not (out / "credentials.env").exists()
    # The media relay's command line (docker/rtp-relay.sh): media on the host's address.
    relay = (out / "rtp-relay.args").read_text(encoding="utf-8").splitlines()
    assert relay[0] == "/usr/bin/rtpengine" or relay[0].endswith("/rtpengine")
    assert "--interface=10.1.2.3" in relay and "--listen-ng=127.0.0.1:2223" in relay
    assert "WITH_MEDIA_RELAY\n" in (out / "sip-edge.defines").read_text(encoding="utf-8")


def test_render_refuses_a_missing_value(tmp_path: Path) -> None:
    env = _env(**{k: v for k, v in PROD_ENV.items() if k != "LIVEKIT_NODE_IP"})
    env.pop("LIVEKIT_NODE_IP", None)
    result = _run(
        [sys.executable, str(ROOT / "docker/render_configs.py"), "--root", str(ROOT),
         str(tmp_path / "r")],
        env,
    )  # fmt: skip
    assert result.returncode == 2
    assert "LIVEKIT_NODE_IP" in result.stderr
    assert not (tmp_path / "r" / "livekit-server.yaml").exists()


def test_agent_config_pins_only_the_health_port_and_address(tmp_path: Path) -> None:
    target = tmp_path / "agent.yaml"
    result = _run(
        [sys.executable, str(ROOT / "docker/agent_config.py"), str(ROOT / "config/agent.yaml"),
         str(target)],
        _env(AGENT_HEALTH_PORT="8099"),
    )  # fmt: skip
    assert result.returncode == 0, result.stderr
    shared = yaml.safe_load((ROOT / "config/agent.yaml").read_text(encoding="utf-8"))
    pinned = yaml.safe_load(target.read_text(encoding="utf-8"))
    assert pinned["worker"]["http_port"] == 8099
    # Prometheus scrapes every replica over the compose network.
    assert pinned["worker"]["http_host"] == "0.0.0.0"
    # The copy lives elsewhere (/tmp in the image): it names the shared flows file absolutely.
    assert Path(pinned["flows"]) == (ROOT / "config" / shared["flows"]).resolve()
    pinned["flows"] = shared["flows"]
    pinned["worker"]["http_port"] = shared["worker"]["http_port"]
    if "http_host" in shared["worker"]:
        pinned["worker"]["http_host"] = shared["worker"]["http_host"]
    else:
        del pinned["worker"]["http_host"]
    assert pinned == shared


def test_inference_role_refuses_to_start_without_verified_models(tmp_path: Path) -> None:
    result = _run(
        [str(ENTRYPOINT), "inference"],
        _env(VOICESTACK_MODEL_SET="gpu-en", VOICESTACK_MODELS_DIR=str(tmp_path)),
    )
    assert result.returncode == 1
    assert "download_models.sh gpu-en" in result.stderr


def test_unknown_model_set_is_a_clear_error(tmp_path: Path) -> None:
    result = _run(
        [str(ENTRYPOINT), "inference"],
        _env(VOICESTACK_MODEL_SET="gpu-xx", VOICESTACK_MODELS_DIR=str(tmp_path)),
    )
    assert result.returncode == 2
    assert "unknown model set 'gpu-xx'" in result.stderr


def test_health_check_fails_when_nothing_listens(tmp_path: Path) -> None:
    import socket

    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    result = _run([str(ENTRYPOINT), "health-inference"], _env(INFERENCE_PORT=str(port)))
    assert result.returncode != 0
