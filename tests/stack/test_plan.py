"""The plan builder: component order, keys via environment, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest
from prod_env import PROD_ENV

from worker.config.stack import Profile
from worker.stack.plan import SIP_UNAVAILABLE, PlanError, build_plan
from worker.stack.ports import port_in_use
from worker.stack.render import RenderedStack, RunFiles, render_stack, write_run_files


def _rendered(tmp_path: Path) -> tuple[RenderedStack, RunFiles]:
    stack = render_stack(Profile.LOOPBACK, {})
    return stack, write_run_files(stack, tmp_path / "run")


def test_core_plan_order_health_and_secrets_only_in_env(tmp_path: Path) -> None:
    stack, files = _rendered(tmp_path)
    tools = tmp_path / "tools"
    tools.mkdir()
    (tools / "livekit-sip").write_text("#!/bin/sh\n")
    specs = build_plan(stack, files, ("sip", "redis", "livekit"), tools)
    assert [s.name for s in specs] == ["redis", "livekit", "sip"]  # stack order, not arg order
    redis, livekit, sip = specs
    assert redis.health is not None and redis.health.kind == "redis"
    assert livekit.env["LIVEKIT_KEYS"] == f"{stack.api_key}: {stack.api_secret}"
    assert sip.env["LIVEKIT_API_SECRET"] == stack.api_secret
    assert sip.health is not None and 429 in sip.health.ok_statuses
    for path in (files.livekit_config, files.sip_config):
        text = path.read_text()
        assert stack.api_secret not in text
        assert path.stat().st_mode & 0o077 == 0  # owner-only


def test_missing_sip_binary_refuses_with_the_reason(tmp_path: Path) -> None:
    stack, files = _rendered(tmp_path)
    with pytest.raises(PlanError, match="Go module proxy refuses") as err:
        build_plan(stack, files, ("redis", "livekit", "sip"), tmp_path / "empty-tools")
    assert SIP_UNAVAILABLE in str(err.value) and "--components redis,livekit" in str(err.value)


def test_unknown_component_is_named(tmp_path: Path) -> None:
    stack, files = _rendered(tmp_path)
    with pytest.raises(
        PlanError, match=r"unknown component\(s\) redsi; known: redis, livekit, sip"
    ):
        build_plan(stack, files, ("redsi",))


def test_secrets_and_logs_stay_owner_only(tmp_path: Path) -> None:
    from worker.stack.supervisor import _open_log

    _stack, files = _rendered(tmp_path)
    assert files.run_dir.stat().st_mode & 0o077 == 0
    assert files.credentials is not None  # loopback: this run's generated key pair
    assert files.credentials.stat().st_mode & 0o077 == 0
    log = files.run_dir / "agent.log"
    log.write_text("left by an earlier run\n")
    log.chmod(0o644)
    _open_log(log).close()
    assert log.stat().st_mode & 0o077 == 0


def test_prod_keys_are_never_written_to_disk(tmp_path: Path) -> None:
    env = PROD_ENV
    run = tmp_path / "run"
    run.mkdir()
    (run / "credentials.env").write_text("LIVEKIT_API_SECRET=old\n")  # a loopback run's
    files = write_run_files(render_stack(Profile.PROD, env), run)
    assert files.credentials is None
    written = "".join(p.read_text() for p in run.iterdir() if p.is_file())
    assert env["LIVEKIT_API_SECRET"] not in written
    assert not (run / "credentials.env").exists()


def test_loopback_trunk_never_takes_the_operators_pbx_password() -> None:
    stack = render_stack(
        Profile.LOOPBACK, {"PBX_AUTH_USERNAME": "pbx", "PBX_AUTH_PASSWORD": "s3cret-" + "x" * 20}
    )
    assert stack.env["PBX_AUTH_USERNAME"] == "" and stack.env["PBX_AUTH_PASSWORD"] == ""


def test_loopback_ports_are_distinct_and_free_for_what_binds_them(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import worker.stack.render as render

    # The kernel offers one port twice (nothing is bound until the stack starts): the second
    # pick must go on to another port.
    real = render.free_port
    offered: list[int] = []

    def repeating(host: str = "127.0.0.1", proto: str = "tcp") -> int:
        port = offered[-1] if len(offered) == 1 else real(host, proto)  # type: ignore[arg-type]
        offered.append(port)
        return port

    monkeypatch.setattr(render, "free_port", repeating)
    env = render.loopback_env()
    single = [
        int(env[k].rpartition(":")[2])
        for k in env
        if k.endswith("_PORT") or k in ("REDIS_ADDRESS", "LIVEKIT_STUN_SERVER")
    ]
    assert len(single) == len(set(single)) == 9, env
    for key in ("SIP_PORT", "SIP_EDGE_PORT"):  # kamailio and livekit-sip bind UDP and TCP
        assert not port_in_use("127.0.0.1", int(env[key]), "tcp"), key
    rtp = [int(x) for x in env["SIP_RTP_PORT_RANGE"].split("-")]
    relay = [int(x) for x in env["RTP_RELAY_PORT_RANGE"].split("-")]
    assert relay[1] < rtp[0] or relay[0] > rtp[1], (rtp, relay)
