"""The flows file: the shipped one loads; every malformed flow is refused with its reason."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from worker.config.agent import load_agent_config, load_call_flows
from worker.config.flows import FlowsConfig, HoursConfig, load_flows
from worker.config.loader import ConfigError, parse_model

ROOT = Path(__file__).resolve().parents[2]


def test_shipped_flows_load_and_answer_every_number() -> None:
    cfg = load_agent_config(ROOT / "config" / "agent.yaml")
    flows = load_call_flows(cfg, ROOT / "config" / "agent.yaml")
    assert flows == load_flows(ROOT / "config" / "flows.yaml")
    flow = flows.for_number("+15550100")
    assert flow is not None and flow.default and flow.transfer is not None
    assert flows.transfer_uri(flow.transfer.target).startswith("sip:")


def _flows(**flow: Any) -> dict[str, Any]:
    return {
        "transfer_targets": {"desk": "sip:desk@10.0.0.5"},
        "flows": [{"name": "main", "numbers": ["+15550100"], **flow}],
    }


@pytest.mark.parametrize(
    ("data", "reason"),
    [
        (_flows(transfer={"target": "nowhere"}), "not in transfer_targets"),
        (_flows(menu={"1": {"say": "x"}}), "has a menu but no menu_prompt"),
        (_flows(menu_prompt="m", menu={"1": {"collect": "acct"}}), "not under collect"),
        (_flows(menu_prompt="m", menu={"1": {"say": "x", "transfer": True}}), "exactly one"),
        (_flows(menu_prompt="m", menu={"0": {"transfer": True}}), "but no transfer"),
        (_flows(menu_prompt="m", menu={"12": {"say": "x"}}), "menu.12"),
        (
            _flows(
                transfer={"target": "desk", "key": "1"}, menu_prompt="m", menu={"1": {"say": "x"}}
            ),
            "both the transfer key and another menu choice",
        ),
        (
            _flows(
                collect={"acct": {"prompt": "p", "label": "l", "min_digits": 9, "max_digits": 4}}
            ),
            "min_digits 9 > max_digits 4",
        ),
        (_flows(hours={"open": {"mon": "18:00-08:00"}, "closed_message": "c"}), "ends before"),
        (_flows(hours={"open": {"monday": "08:00-18:00"}, "closed_message": "c"}), "unknown day"),
        (
            _flows(hours={"timezone": "Mars/Olympus", "open": {}, "closed_message": "c"}),
            "unknown time zone",
        ),
        (_flows(numbers=["call-me"]), "not a phone number"),
        (_flows(numbers=[], default=False), "no numbers and is not the default"),
        (_flows(surprise=1), "surprise"),
        (
            {
                "transfer_targets": {"evil": "sip:a@b;maddr=6.6.6.6"},
                "flows": [{"name": "m", "default": True}],
            },
            "no parameters or headers",
        ),
        (
            {"flows": [{"name": "a", "numbers": ["123"]}, {"name": "b", "numbers": ["123"]}]},
            "number 123 is in flows",
        ),
        (
            {"flows": [{"name": "a", "default": True}, {"name": "b", "default": True}]},
            "more than one default flow",
        ),
    ],
)
def test_malformed_flows_are_refused(data: dict[str, Any], reason: str) -> None:
    with pytest.raises(ConfigError, match=reason.replace(".", r"\.")):
        parse_model(data, FlowsConfig, "flows.yaml")


def test_called_number_picks_its_flow_else_the_default() -> None:
    flows = parse_model(
        {
            "flows": [
                {"name": "sales", "numbers": ["+15550101"], "greeting": "Sales."},
                {"name": "support", "default": True},
            ]
        },
        FlowsConfig,
    )
    assert flows.for_number("+15550101").name == "sales"  # type: ignore[union-attr]
    assert flows.for_number("+15550199").name == "support"  # type: ignore[union-attr]
    assert flows.for_number(None).name == "support"  # type: ignore[union-attr]
    only_sales = parse_model({"flows": [{"name": "sales", "numbers": ["123"]}]}, FlowsConfig)
    assert only_sales.for_number("999") is None


def test_business_hours_in_the_line_time_zone() -> None:
    hours = HoursConfig(
        timezone="Europe/Berlin", open={"mon": "08:00-18:00", "sat": "10:00-24:00"},
        closed_message="We are closed.",
    )  # fmt: skip
    monday = datetime(2026, 12, 7, 7, 30, tzinfo=UTC)  # 08:30 in Berlin (CET)
    assert hours.is_open(monday)
    assert not hours.is_open(datetime(2026, 12, 7, 17, 0, tzinfo=UTC))  # 18:00 Berlin: closed
    assert not hours.is_open(datetime(2026, 12, 8, 9, 0, tzinfo=UTC))  # Tuesday: no hours
    assert hours.is_open(datetime(2026, 12, 12, 22, 59, tzinfo=UTC))  # Saturday 23:59


def test_fallback_transfer_must_be_an_allowlisted_target(tmp_path: Path) -> None:
    (tmp_path / "flows.yaml").write_text(
        "transfer_targets: {desk: 'sip:desk@10.0.0.5'}\nflows: [{name: m, default: true}]\n"
    )
    agent = (ROOT / "config" / "agent.yaml").read_text()
    for target, ok in (("desk", True), ("sip:desk@10.0.0.5", True), ("sip:x@6.6.6.6", False)):
        path = tmp_path / "agent.yaml"
        path.write_text(agent.replace('transfer_to: ""', f'transfer_to: "{target}"'))
        cfg = load_agent_config(path)
        if ok:
            load_call_flows(cfg, path)
        else:
            with pytest.raises(ConfigError, match="is not a transfer target"):
                load_call_flows(cfg, path)


def test_check_config_matches_lines_and_trunk_numbers(tmp_path: Path) -> None:
    from prod_env import PROD_ENV

    from worker.config.telephony import load_telephony
    from worker.telephony.checks import check_voice_configs

    tel = load_telephony(ROOT / "config" / "telephony.yaml", PROD_ENV)
    trunk_number = tel.trunks[0].numbers[0]
    (tmp_path / "flows.yaml").write_text("flows:\n  - {name: other, numbers: ['+4930999']}\n")
    agent = tmp_path / "agent.yaml"
    agent.write_text((ROOT / "config" / "agent.yaml").read_text())
    problems = check_voice_configs(ROOT, tel, agent)
    assert any(f"calls to {trunk_number} match no flow" in p for p in problems), problems
    assert any("answers +4930999, which no trunk" in p for p in problems), problems
    assert check_voice_configs(ROOT, tel, ROOT / "config" / "agent.yaml") == []
