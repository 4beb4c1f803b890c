"""The records section of agent.yaml: supported stores only, environment overrides, and a
line's overrides."""

from __future__ import annotations

import pytest

from worker.config.loader import ConfigError, parse_model
from worker.config.records import FlowRecords, RecordsConfig


@pytest.mark.parametrize(
    "url",
    ["sqlite:///.run/r.db", "postgresql://rec@db/records", "postgresql+psycopg://rec@db/r"],
)
def test_supported_stores(url: str) -> None:
    assert RecordsConfig(store_url=url).store_url == url


@pytest.mark.parametrize("url", ["postgres://db/r", "mysql://db/r", "records.db", "sqlite://x"])
def test_an_unsupported_store_is_a_config_error(url: str) -> None:
    with pytest.raises(ConfigError, match="store_url"):
        parse_model({"store_url": url}, RecordsConfig, "agent.yaml")


def test_environment_overrides_and_is_checked_too() -> None:
    cfg = RecordsConfig().resolved(
        {"VOICESTACK_RECORDS_URL": "postgresql://rec@db/r", "VOICESTACK_REDIS_URL": "redis://r:1/0"}
    )
    assert cfg.store_url == "postgresql://rec@db/r" and cfg.live_url == "redis://r:1/0"
    with pytest.raises(ValueError, match="store_url"):
        RecordsConfig().resolved({"VOICESTACK_RECORDS_URL": "mysql://db"})


def test_a_line_overrides_only_what_it_sets() -> None:
    base = RecordsConfig(retention_days=30)
    line = base.for_flow(FlowRecords(recording=True, redact=("card",)))
    assert line.recording and line.redact == ("card",) and line.retention_days == 30
    assert line.mask_caller_id == base.mask_caller_id
    assert base.for_flow(None) is base


def test_unknown_keys_and_kinds_are_refused() -> None:
    with pytest.raises(ConfigError, match="retention"):
        parse_model({"retention": 3}, RecordsConfig, "agent.yaml")
    with pytest.raises(ConfigError, match="redact"):
        parse_model({"redact": ["card", "passport"]}, RecordsConfig, "agent.yaml")
