"""${VAR} substitution and env files: typed where safe, structure-safe, loud when missing."""

from __future__ import annotations

from pathlib import Path

import pytest

from worker.config.loader import ConfigError
from worker.config.stack import load_env_file, merged_env, substitute_tree


def test_whole_placeholders_take_their_yaml_type_only_when_exact() -> None:
    data = {"port": "${P}", "on": "${B}", "num": "${N}", "zero": "${Z}", "empty": "${E:-}"}
    env = {"P": "7880", "B": "false", "N": "+15550100", "Z": "0755"}
    assert substitute_tree(data, env, "t") == {
        "port": 7880,
        "on": False,
        "num": "+15550100",
        "zero": "0755",
        "empty": None,
    }


def test_values_cannot_change_structure_and_partial_placeholders_stay_text() -> None:
    data = {"password": "${PW}", "url": "ws://${HOST}:${PORT:-7880}", "lit": "$${NOT}"}
    env = {"PW": "a: b\n- c", "HOST": "10.0.0.1"}
    assert substitute_tree(data, env, "t") == {
        "password": "a: b\n- c",
        "url": "ws://10.0.0.1:7880",
        "lit": "${NOT}",
    }


def test_every_missing_variable_is_named_once() -> None:
    with pytest.raises(ConfigError, match=r"^f.yaml: no value for A, B: set them"):
        substitute_tree({"x": "${A}", "y": ["${B}", "${A}"], "z": "${C:-ok}"}, {}, "f.yaml")


def test_env_file_parsing(tmp_path: Path) -> None:
    path = tmp_path / "x.env"
    path.write_text("# comment\n\nexport A=1\nB = 'two words'\nC=\"q\"\nD=plain # trailing\nE=\n")
    assert load_env_file(path) == {"A": "1", "B": "two words", "C": "q", "D": "plain", "E": ""}
    assert merged_env(path, {"A": "from-env"})["A"] == "from-env"  # environment wins


def test_env_file_errors_name_file_and_line(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="not found"):
        load_env_file(tmp_path / "missing.env")
    bad = tmp_path / "bad.env"
    bad.write_text("A=1\n2BAD=x\n")
    with pytest.raises(ConfigError, match=r"bad.env:2: expected KEY=value"):
        load_env_file(bad)
