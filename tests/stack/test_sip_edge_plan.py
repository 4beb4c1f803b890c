"""The SIP edge's process spec: what it admits comes from the trunks, where it forwards from
livekit-sip's rendered address, and the real kamailio accepts the shipped config with them."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from worker.config.stack import Profile
from worker.config.telephony import SipEdgeConfig, TelephonyConfig
from worker.stack.plan import build_plan
from worker.stack.render import render_stack, write_run_files
from worker.telephony.provision import desired_trunk


def _defines(argv: tuple[str, ...]) -> dict[str, str]:
    pairs = [argv[i + 1] for i, a in enumerate(argv) if a == "-A"]
    return dict(p.split("=", 1) for p in pairs)


def test_edge_admits_the_trunks_sources_and_forwards_to_livekit_sip(tmp_path: Path) -> None:
    stack = render_stack(Profile.LOOPBACK, {})
    files = write_run_files(stack, tmp_path / "run")
    (spec,) = build_plan(stack, files, ("sip-edge",))
    defines = _defines(spec.argv)
    sip_host, sip_port = stack.sip_address
    assert defines["UPSTREAM"] == f'"{sip_host}:{sip_port}"'
    assert defines["ALLOW_NETS"] == '"127.0.0.1/32"'  # the loopback PBX_ADDRESS
    assert defines["LISTEN_PORT"] == str(stack.sip_edge_address[1])
    assert defines["PIKE_DENSITY"] == "30" and defines["MAX_MSG_LEN"] == "8192"
    assert spec.health is not None and spec.health.port == stack.sip_edge_address[1]
    # The real binary parses the shipped config with exactly these values.
    check = subprocess.run(
        [spec.argv[0], "-c", *spec.argv[1:]], capture_output=True, text=True, timeout=30
    )
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
