"""The plan builder: component order, keys via environment, clear refusals."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.stack import Profile
from worker.stack.plan import SIP_UNAVAILABLE, PlanError, build_plan
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
