"""Outbound calls without dialling: the trunk config refuses open destinations and half-set
credentials, a request outside the trunk's destinations or with a bad number is refused before
anything is dialled (exit status 2), SIP statuses map to outcomes and exit codes, and
check-config refuses a password written in the file."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from lines_support import TRUNK, telephony_with_outbound

from worker.config.loader import ConfigError, parse_model
from worker.config.telephony import OutboundTrunkConfig
from worker.stack.render import project_root
from worker.telephony.checks import check_secrets_from_env
from worker.telephony.outbound import CallRequest, OutboundError, Outcome, _validate, classify

ROOT = project_root()


@pytest.mark.parametrize(
    ("override", "reason"),
    [
        ({"destinations": []}, "destinations"),
        ({"destinations": ["+"]}, "would let the trunk dial anywhere"),
        ({"destinations": [""]}, "destinations"),
        ({"address": "sip:pbx@10.0.0.5"}, r"not host\[:port\]"),
        ({"auth_username": "u"}, "needs both auth_username and auth_password"),
        ({"numbers": ["abc"]}, "not a phone number"),
        ({"transport": "ws"}, "transport"),
    ],
)
def test_bad_outbound_trunks_are_refused(override: dict[str, object], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason):
        parse_model({**TRUNK, **override}, OutboundTrunkConfig)


@pytest.mark.parametrize(
    ("request_", "reason"),
    [
        (CallRequest(number="12ab"), "not a phone number"),
        (CallRequest(number="+4930123456"), "outside the destinations"),
        (CallRequest(number="+15550199", trunk="other"), "unknown outbound trunk 'other'"),
        (CallRequest(number="+15550199", dtmf="12x"), "only 0-9, \\* and #"),
    ],
)
def test_requests_refused_before_dialling(request_: CallRequest, reason: str) -> None:
    with pytest.raises(OutboundError, match=reason):
        _validate(telephony_with_outbound(), request_)
    trunk, number = _validate(telephony_with_outbound(), CallRequest(number=" +15550199"))
    assert trunk.name == "out" and number == "+15550199"


def test_sip_statuses_map_to_outcomes_and_exit_codes() -> None:
    assert classify(486) is Outcome.BUSY and classify(603) is Outcome.BUSY
    assert classify(480) is Outcome.NO_ANSWER and classify(487) is Outcome.NO_ANSWER
    assert classify(404) is Outcome.INVALID_NUMBER and classify(484) is Outcome.INVALID_NUMBER
    assert classify(503) is Outcome.FAILED and classify(None) is Outcome.FAILED
    assert [o.exit_code for o in Outcome] == [0, 3, 4, 5, 6]


def test_cli_refuses_a_bad_number_with_exit_status_2(tmp_path: Path) -> None:
    tel = tmp_path / "telephony.yaml"
    data = yaml.safe_load((ROOT / "config" / "telephony.yaml").read_text())
    data["outbound_trunks"] = [TRUNK]
    tel.write_text(yaml.safe_dump(data))
    for number, reason in (("12ab", "not a phone number"), ("+4930123", "outside the dest")):
        proc = subprocess.run(
            [sys.executable, "-m", "worker.cli", "call", number, "--profile", "loopback",
             "--telephony", str(tel)],
            capture_output=True, text=True, timeout=60, cwd=ROOT,
        )  # fmt: skip
        assert proc.returncode == 2, proc.stderr
        assert reason in proc.stderr


def test_literal_trunk_password_is_refused(tmp_path: Path) -> None:
    path = tmp_path / "telephony.yaml"
    path.write_text(
        "outbound_trunks:\n  - {name: out, auth_password: hunter2hunter2}\n"
        "trunks:\n  - {name: in, auth_password: '${PBX_AUTH_PASSWORD:-}'}\n"
        "  - {name: in2, auth_password: checked-by-the-inbound-rules}\n"
    )
    (problem,) = check_secrets_from_env(path)
    assert "outbound_trunks 'out': auth_password is written in the file" in problem


@pytest.mark.parametrize(
    ("trunk", "hop"),
    [
        ({}, "10.0.0.5:5060"),
        ({"address": "10.0.0.5"}, "10.0.0.5:5060"),
        ({"transport": "tcp"}, "10.0.0.5:5060;transport=tcp"),
        ({"transport": "tls"}, None),  # the edge speaks no TLS: straight from livekit-sip
        ({"address": "pbx.example.lan:5060"}, None),  # the edge resolves no names
    ],
)
def test_outbound_trunks_pass_the_edge_when_they_can(
    trunk: dict[str, object], hop: str | None
) -> None:
    from worker.telephony.provision import NEXT_HOP_HEADER, desired_outbound_trunk

    cfg = telephony_with_outbound(**trunk)
    (out,) = cfg.outbound_trunks
    assert out.edge_hop() == hop
    want = desired_outbound_trunk(out, ("127.0.0.1", 5060))
    if hop is None:
        assert want.address == out.address and not dict(want.headers)
        assert cfg.edge_outbound_peers() == []
    else:
        # livekit-sip sends to the edge, which sends on to the trunk and relays the media
        assert want.address == "127.0.0.1:5060" and dict(want.headers) == {NEXT_HOP_HEADER: hop}
        assert cfg.edge_outbound_peers() == ["10.0.0.5/32"]
    # Without the edge, every trunk goes straight to its address.
    direct = desired_outbound_trunk(out)
    assert direct.address == out.address and not dict(direct.headers)
