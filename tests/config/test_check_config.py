"""check-config: the shipped configs pass, and each rule has a fixture that fails it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest
import yaml
from prod_env import PROD_ENV

from worker.cli import main
from worker.config.stack import Profile
from worker.stack.plan import tool_path
from worker.stack.render import LIVEKIT_CONFIG, SIP_CONFIG, TELEPHONY_CONFIG, project_root
from worker.telephony.checks import check_stack

AGENT = "config/agent.yaml"
FLOWS = "config/flows.yaml"
INFERENCE = "config/inference.yaml"

FIXTURES = Path(__file__).parent / "fixtures"


def _root_with(tmp_path: Path, name: str, patch_file: str) -> Path:
    """A copy of the shipped configs with ``patch_file``'s keys merged into file ``name``."""
    root = tmp_path / "root"
    (root / "config").mkdir(parents=True)
    for rel in (LIVEKIT_CONFIG, SIP_CONFIG, TELEPHONY_CONFIG, AGENT, FLOWS, INFERENCE):
        shutil.copy(project_root() / rel, root / rel)
    data = yaml.safe_load((root / name).read_text())
    patch = yaml.safe_load((FIXTURES / patch_file).read_text())

    def merge(base: dict, over: dict) -> None:
        for key, value in over.items():
            if isinstance(value, dict) and isinstance(base.get(key), dict):
                merge(base[key], value)
            else:
                base[key] = value

    merge(data, patch)
    (root / name).write_text(yaml.safe_dump(data))
    return root


# Rule tests stay pure Python: livekit-server's own strict parse is tested separately below.
NO_BINARY = Path("/nonexistent/livekit-server")


def _problems(profile: str = "prod", env: dict | None = None, **kw: object) -> list[str]:
    kw.setdefault("livekit_binary", NO_BINARY)
    return check_stack(profile, PROD_ENV if env is None else env, **kw).problems  # type: ignore[arg-type]


def test_shipped_configs_pass_in_prod() -> None:
    report = check_stack(Profile.PROD, PROD_ENV, livekit_binary=NO_BINARY)
    assert report.problems == []
    assert report.notes and "did not run" in report.notes[0]  # said, never silently skipped
    assert report.telephony is not None
    assert report.telephony.trunks[0].numbers == ["+15550100"]  # the "+" survives substitution
    assert report.stack is not None and report.stack.livekit["port"] == 7880  # typed default


def test_shipped_configs_pass_in_loopback_without_any_env() -> None:
    report = check_stack(Profile.LOOPBACK, {}, livekit_binary=NO_BINARY)
    assert report.problems == []
    assert report.stack is not None
    assert report.stack.livekit["rtc"]["node_ip"] == "127.0.0.1"
    assert report.stack.livekit["rtc"]["enable_loopback_candidate"] is True
    assert len(report.stack.api_secret) >= 32


def test_env_example_alone_is_refused() -> None:
    from worker.config.stack import load_env_file

    env = load_env_file(project_root() / ".env.example")
    problems = _problems(env=env)
    assert any("LIVEKIT_API_KEY" in p for p in problems), problems


@pytest.mark.parametrize(
    ("fixture", "expected"),
    [
        ("telephony_rule_without_trunks.yaml", "has no trunks (trunk_ids)"),
        ("telephony_hostname_address.yaml", "'pbx.example.com' is not an IP address or CIDR"),
        ("telephony_open_trunk.yaml", "has neither allowed_addresses nor digest auth"),
        ("telephony_unknown_trunk.yaml", "names unknown trunk(s) pbx-typo"),
        ("telephony_typo_key.yaml", "allowed_adresses: Extra inputs are not permitted"),
    ],
)
def test_telephony_rule_fixtures_fail(fixture: str, expected: str) -> None:
    problems = _problems(telephony_path=FIXTURES / fixture)
    assert len(problems) == 1, problems
    assert expected in problems[0]
    assert fixture in problems[0]  # the message names the file


@pytest.mark.parametrize(
    ("name", "fixture", "expected"),
    [
        (SIP_CONFIG, "sip_unknown_key.yaml", "unknown key 'log_level'"),
        (SIP_CONFIG, "sip_unknown_key.yaml", "unknown key 'redis.adress'"),
        (SIP_CONFIG, "sip_use_external_ip.yaml", "use_external_ip: true"),
        (SIP_CONFIG, "sip_rtp_port_mapping.yaml", "must be a port or a range like 10000-20000"),
        (LIVEKIT_CONFIG, "livekit_public_stun.yaml", "'stun.l.google.com:19302' is a hostname"),
        (LIVEKIT_CONFIG, "livekit_public_stun.yaml", "'74.125.250.129:19302' is a public address"),
        (LIVEKIT_CONFIG, "livekit_no_stun.yaml", "rtc.stun_servers is empty"),
        (LIVEKIT_CONFIG, "livekit_use_external_ip.yaml", "rtc.use_external_ip: true"),
        (LIVEKIT_CONFIG, "livekit_development.yaml", "development: true"),
        (LIVEKIT_CONFIG, "livekit_public_endpoints.yaml", "'jaeger.example.com' is a hostname"),
        (LIVEKIT_CONFIG, "livekit_public_endpoints.yaml", "'8.8.8.8:6379' is a public address"),
        (SIP_CONFIG, "sip_public_ws_url.yaml", "jaeger_url host '8.8.4.4' is a public address"),
        (SIP_CONFIG, "sip_public_ws_url.yaml", "ws_url '1.1.1.1' is a public address"),
        (
            LIVEKIT_CONFIG,
            "livekit_redis_lan_no_password.yaml",
            "10.0.0.5:6379 is not loopback and redis.password is empty",
        ),
        (SIP_CONFIG, "sip_bad_port.yaml", "sip_port 99999 is not a port number"),
    ],
)
def test_server_config_fixtures_fail(
    tmp_path: Path, name: str, fixture: str, expected: str
) -> None:
    root = _root_with(tmp_path, name, fixture)
    problems = _problems(root=root)
    assert any(expected in p for p in problems), problems
    assert all(p.startswith(name) for p in problems), problems


@pytest.mark.parametrize(
    ("key", "secret", "expected"),
    [
        ("APIvoicestack01", "tooshort", "has 8 characters; at least 32"),
        ("devkey", "s" * 40, "'devkey' is LiveKit's public development key"),
    ],
)
def test_weak_api_keys_fail_outside_dev(key: str, secret: str, expected: str) -> None:
    env = {**PROD_ENV, "LIVEKIT_API_KEY": key, "LIVEKIT_API_SECRET": secret}
    for profile in ("prod", "loopback"):
        problems = _problems(profile, env)
        assert any(expected in p for p in problems), (profile, problems)
    assert _problems("dev", env) == []


def test_missing_variables_are_named_for_both_files() -> None:
    env = {k: v for k, v in PROD_ENV.items() if k not in ("LIVEKIT_NODE_IP", "SIP_NAT_IP")}
    problems = _problems(env=env)
    assert len(problems) == 1
    assert "livekit-server.yaml: no value for LIVEKIT_NODE_IP" in problems[0]
    assert "sip-config.yaml: no value for SIP_NAT_IP" in problems[0]


def test_cli_exit_codes(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    env_file = tmp_path / "prod.env"
    env_file.write_text("".join(f"{k}={v}\n" for k, v in PROD_ENV.items()))
    assert main(["check-config", "--env-file", str(env_file)]) == 0
    assert "check-config: OK (profile prod)" in capsys.readouterr().out

    bad = FIXTURES / "telephony_open_trunk.yaml"
    assert main(["check-config", "--env-file", str(env_file), "--telephony", str(bad)]) == 2
    assert "has neither allowed_addresses nor digest auth" in capsys.readouterr().err

    broken = tmp_path / "broken.env"
    broken.write_text("LIVEKIT_API_KEY=x\nthis line is not an assignment\n")
    assert main(["check-config", "--env-file", str(broken)]) == 2
    assert f"{broken}:2: expected KEY=value" in capsys.readouterr().err


@pytest.mark.integration
def test_livekit_server_strict_parser_checks_the_rendered_config(tmp_path: Path) -> None:
    binary = tool_path("livekit-server")
    report = check_stack(Profile.PROD, PROD_ENV, livekit_binary=binary)
    assert report.problems == [] and report.notes == []
    root = _root_with(tmp_path, LIVEKIT_CONFIG, "livekit_unknown_key.yaml")
    problems = check_stack(Profile.PROD, PROD_ENV, root=root, livekit_binary=binary).problems
    assert len(problems) == 1, problems
    assert "livekit-server rejects it" in problems[0] and "field bogus_key not found" in problems[0]


def _trunk_yaml(**trunk: object) -> str:
    base: dict[str, object] = {"name": "pbx", "numbers": ["+15550100"]}
    base.update(trunk)
    return yaml.safe_dump(
        {
            "agent_name": "voicestack-agent",
            "trunks": [base],
            "dispatch_rules": [{"name": "pbx-to-agent", "trunks": ["pbx"]}],
        }
    )


STRONG = {"auth_username": "pbx", "auth_password": "correct-horse-battery"}


@pytest.mark.parametrize(
    ("trunk", "expected"),
    [
        ({"allowed_addresses": ["0.0.0.0/0"]}, "admits every address"),
        ({"allowed_addresses": ["::/0"], **STRONG}, "admits every address"),
        ({"allowed_addresses": ["93.184.216.34/32"]}, "public and the trunk has no digest auth"),
        ({"allowed_addresses": ["198.51.0.0/16"], **STRONG}, "admits a whole public network"),
        (
            {"allowed_addresses": ["10.0.0.20/32"], "auth_username": "u", "auth_password": "abc"},
            "auth_password has 3 characters",
        ),
        ({"allowed_addresses": ["10.0.0.20/32"], "numbers": ["call-me"]}, "is not a phone number"),
        (
            {"allowed_addresses": ["10.0.0.20/32"], "allowed_numbers": ["+1 555"]},
            "is not a phone number",
        ),
    ],
)
def test_unsafe_trunks_are_refused(tmp_path: Path, trunk: dict[str, object], expected: str) -> None:
    path = tmp_path / "telephony.yaml"
    path.write_text(_trunk_yaml(**trunk))
    problems = _problems(telephony_path=path)
    assert len(problems) == 1, problems
    assert expected in problems[0]


@pytest.mark.parametrize(
    "trunk",
    [
        {"allowed_addresses": ["10.0.0.20/32", "192.168.1.0/24", "fd00::/64"]},
        {"allowed_addresses": ["93.184.216.34/32"], **STRONG},
        {"numbers": ["1001"], **STRONG},
    ],
)
def test_safe_trunks_pass(tmp_path: Path, trunk: dict[str, object]) -> None:
    path = tmp_path / "telephony.yaml"
    path.write_text(_trunk_yaml(**trunk))
    assert _problems(telephony_path=path) == []


def test_agent_config_must_agree_with_telephony_and_the_server(tmp_path: Path) -> None:
    agent = yaml.safe_load((project_root() / AGENT).read_text())
    agent["worker"]["agent_name"] = "someone-else"
    agent["llm"]["max_tokens"] = 4096  # the shipped inference cap is 512
    path = tmp_path / "agent.yaml"
    path.write_text(yaml.safe_dump(agent))
    problems = _problems(agent_path=path)
    assert any("differs from config/telephony.yaml's agent_name" in p for p in problems), problems
    assert any("above the inference server's cap llm.max_tokens 512" in p for p in problems)
    path.write_text("persona: {}\n")
    assert any(str(path) in p and "persona" in p for p in _problems(agent_path=path))
