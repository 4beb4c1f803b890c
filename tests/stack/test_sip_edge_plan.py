"""The SIP edge's and the media relay's process specs: what the edge admits comes from the
trunks, where it forwards from livekit-sip's rendered address, the real kamailio accepts the
shipped config with them, and the real rtpengine starts from its spec and answers the probe."""

from __future__ import annotations

import asyncio
import subprocess
from pathlib import Path

import pytest

from worker.config.loader import ConfigError
from worker.config.stack import Profile
from worker.config.telephony import SipEdgeConfig, TelephonyConfig, load_telephony
from worker.stack.plan import RELAY_FLAGS, build_plan, edge_binary, sip_edge_defines
from worker.stack.ports import free_port
from worker.stack.process import HealthCheck, probe
from worker.stack.render import render_stack, write_run_files
from worker.telephony.provision import desired_trunk


def _defines(argv: tuple[str, ...]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-A"]
    return {name: value for name, _, value in (p.partition("=") for p in pairs)}


def test_edge_admits_the_trunks_sources_and_forwards_to_livekit_sip(tmp_path: Path) -> None:
    stack = render_stack(Profile.LOOPBACK, {})
    files = write_run_files(stack, tmp_path / "run")
    (spec,) = build_plan(stack, files, ("sip-edge",))
    defines = _defines(spec.argv)
    sip_host, sip_port = stack.sip_address
    assert defines["UPSTREAM"] == f'"{sip_host}:{sip_port}"'
    assert defines["ALLOW_NETS"] == '"127.0.0.1/32"'  # the loopback PBX_ADDRESS
    # no outbound trunk shipped: the placeholder is livekit-sip's own address, admitted anyway
    assert defines["OUTBOUND_NETS"] == f'"{sip_host}/32"'
    assert defines["LISTEN_PORT"] == str(stack.sip_edge_address[1])
    assert defines["PIKE_DENSITY"] == "30" and defines["MAX_MSG_LEN"] == "8192"
    # media_relay (on in the shipped telephony.yaml): the relay routes and its control socket
    assert defines["WITH_MEDIA_RELAY"] == ""
    ng_host, ng_port = stack.rtp_relay_control
    assert defines["RTPENGINE_SOCK"] == f'"udp:{ng_host}:{ng_port}"'
    assert defines["RELAY_FLAGS"].endswith('strict-source endpoint-learning-off"')
    assert spec.health is not None and spec.health.port == stack.sip_edge_address[1]
    # The real binary parses the shipped config with exactly these values.
    check = subprocess.run(
        [spec.argv[0], "-c", *spec.argv[1:]], capture_output=True, text=True, timeout=30
    )
    assert check.returncode == 0, check.stdout + check.stderr


@pytest.mark.parametrize("mode", ["learn", "off"])
def test_the_relay_mode_reaches_the_edge_and_kamailio_accepts_it(tmp_path: Path, mode: str) -> None:
    stack = render_stack(Profile.LOOPBACK, {})
    tel = load_telephony(stack.telephony_path, stack.env)
    tel = tel.model_copy(update={"sip_edge": SipEdgeConfig(media_relay=mode)})
    defines = sip_edge_defines(stack, tel)
    if mode == "off":
        assert "WITH_MEDIA_RELAY" not in defines and "RELAY_FLAGS" not in defines
    else:
        assert defines["RELAY_FLAGS"] == '"' + " ".join(RELAY_FLAGS["learn"]) + '"'
        assert "endpoint-learning-off" not in defines["RELAY_FLAGS"]
    argv = [str(edge_binary()), "-c", "-f", str(stack.root / "sip-edge.cfg")]
    for name, value in defines.items():
        argv += ["-A", f"{name}={value}" if value else name]
    check = subprocess.run(argv, capture_output=True, text=True, timeout=30)
    assert check.returncode == 0, check.stdout + check.stderr


def _config(**trunk: object) -> TelephonyConfig:
    base = {"name": "pbx", "numbers": ["+15550100"], **trunk}
    return TelephonyConfig.model_validate(
        {
            "agent_name": "a",
            "trunks": [base],
            "dispatch_rules": [{"name": "r", "trunks": ["pbx"]}],
        }
    )


def test_a_bare_address_becomes_a_network_so_no_from_host_can_equal_it() -> None:
    cfg = _config(allowed_addresses=["10.0.0.20", "fd00::7"])
    assert cfg.trunks[0].allowed_addresses == ["10.0.0.20/32", "fd00::7/128"]
    assert cfg.edge_allowed_sources() == ["10.0.0.20/32", "fd00::7/128"]


def test_behind_the_edge_livekit_only_admits_the_edge() -> None:
    cfg = _config(allowed_addresses=["10.0.0.20/32"])
    assert list(desired_trunk(cfg.trunks[0], cfg.sip_edge).allowed_addresses) == ["127.0.0.1/32"]
    off = SipEdgeConfig(enabled=False)
    assert list(desired_trunk(cfg.trunks[0], off).allowed_addresses) == ["10.0.0.20/32"]


def test_an_auth_only_trunk_opens_the_edge_to_every_source_rate_limited() -> None:
    cfg = _config(auth_username="pbx", auth_password="correct-horse-battery")
    assert cfg.edge_allowed_sources() == ["0.0.0.0/0", "::/0"]


def test_edge_settings_are_checked() -> None:
    with pytest.raises(ValueError, match="not an IP address or CIDR"):
        SipEdgeConfig(forwards_from="edge.local")
    with pytest.raises(ValueError):
        SipEdgeConfig(max_message_bytes=100)


def test_the_relay_starts_from_its_spec_and_answers_the_ng_ping(tmp_path: Path) -> None:
    stack = render_stack(Profile.LOOPBACK, {})
    files = write_run_files(stack, tmp_path / "run")
    (spec,) = build_plan(stack, files, ("rtp-relay",))
    low, high = stack.rtp_relay_ports
    assert f"--port-min={low}" in spec.argv and f"--port-max={high}" in spec.argv
    assert f"--interface={stack.rtp_relay_ip}" in spec.argv and "--table=-1" in spec.argv
    assert spec.health is not None and spec.health.kind == "rtpengine"
    proc = subprocess.Popen(spec.argv, stderr=subprocess.PIPE, stdout=subprocess.DEVNULL)
    try:

        async def ready() -> bool:
            assert spec.health is not None
            for _ in range(50):
                if await probe(spec.health, limit_s=0.5):
                    return True
            return False

        assert asyncio.run(ready()), "rtpengine never answered the ng ping"
    finally:
        proc.terminate()
        proc.wait(timeout=10)
    # Nothing listening: the probe says so within its limit instead of raising.
    closed = HealthCheck("rtpengine", "127.0.0.1", free_port("127.0.0.1", "udp"))
    assert asyncio.run(probe(closed, limit_s=0.5)) is False


@pytest.mark.parametrize(
    ("env", "message"),
    [
        ({"RTP_RELAY_IP": "0.0.0.0"}, "not one address"),
        ({"RTP_RELAY_IP": "pbx.local"}, "not one address"),
        ({"RTP_RELAY_IP": "", "SIP_EDGE_LISTEN_IP": "0.0.0.0", "SIP_NAT_IP": ""}, "set RTP_"),
        ({"RTP_RELAY_IP": "10.0.0.10", "RTP_RELAY_PORT_RANGE": "30000"}, "LOW-HIGH"),
        ({"RTP_RELAY_IP": "10.0.0.10", "RTP_RELAY_PORT_RANGE": "30000-30001"}, "at least 4"),
        ({"RTP_RELAY_IP": "10.0.0.10", "RTP_RELAY_NG_PORT": "70000"}, "not a port"),
    ],
)
def test_relay_settings_are_checked(tmp_path: Path, env: dict[str, str], message: str) -> None:
    stack = render_stack(Profile.LOOPBACK, {})
    stack.env.update(env)
    with pytest.raises(ConfigError, match=message):
        _ = stack.rtp_relay_ip, stack.rtp_relay_ports, stack.rtp_relay_control


def test_the_relay_address_falls_back_to_a_concrete_one() -> None:
    stack = render_stack(Profile.LOOPBACK, {})
    stack.env.update({"RTP_RELAY_IP": "", "SIP_EDGE_LISTEN_IP": "::", "SIP_NAT_IP": "10.0.0.9"})
    assert stack.rtp_relay_ip == "10.0.0.9"  # the edge listens everywhere: the host's address
    stack.env["SIP_EDGE_LISTEN_IP"] = "10.0.0.10"
    assert stack.rtp_relay_ip == "10.0.0.10"
    stack.env["RTP_RELAY_IP"] = "10.0.0.11"
    assert stack.rtp_relay_ip == "10.0.0.11"
