"""Deployment profile, environment and ``${VAR}`` substitution for the stack's config files.

The top-level ``livekit-server.yaml`` and ``sip-config.yaml`` (and ``config/telephony.yaml``) are
the production shape. Neither livekit-server nor livekit-sip expands variables inside their YAML
(verified in their v1.13.5 / v1.11.0 sources), so our code fills ``${NAME}`` and
``${NAME:-default}`` placeholders from the environment and an optional env file before handing
the rendered files to the binaries. One mechanism for every profile: the loopback profile only
supplies different values (and a few documented overrides), it never copies the files.
"""

from __future__ import annotations

import enum
import os
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from worker.config.loader import ConfigError

__all__ = [
    "Profile",
    "load_env_file",
    "merged_env",
    "placeholders",
    "substitute",
    "substitute_tree",
]


class Profile(enum.StrEnum):
    """Where the stack runs.

    ``prod``: the shipped files with values from the environment; strict checks.
    ``dev``: like prod, but LiveKit's well-known ``devkey`` and short secrets are tolerated.
    ``loopback``: everything on 127.0.0.1 with free ephemeral ports (tests, the demo).
    """

    PROD = "prod"
    DEV = "dev"
    LOOPBACK = "loopback"


# ${NAME} or ${NAME:-default}; NAME follows shell rules. A literal "$" is written "$$".
_PLACEHOLDER = re.compile(r"\$\$|\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}")
_ENV_LINE = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)\s*=\s*(.*)$")


def load_env_file(path: str | Path) -> dict[str, str]:
    """Parse a ``KEY=value`` env file (``#`` comments, optional quotes, optional ``export``).

    Raises :class:`ConfigError` naming the file and line for anything else, so a broken line is
    never silently dropped.
    """
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: env file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read env file: {err.strerror}") from None
    values: dict[str, str] = {}
    for number, raw in enumerate(text.splitlines(), start=1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        match = _ENV_LINE.match(line)
        if match is None:
            raise ConfigError(f"{path}:{number}: expected KEY=value, got {raw!r}")
        key, value = match.group(1), match.group(2).strip()
        if len(value) >= 2 and value[0] == value[-1] and value[0] in "'\"":
            value = value[1:-1]
        elif " #" in value:  # trailing comment on an unquoted value
            value = value.split(" #", 1)[0].rstrip()
        values[key] = value
    return values


def merged_env(
    env_file: str | Path | None, environ: Mapping[str, str] | None = None
) -> dict[str, str]:
    """Values for substitution: the env file, overridden by the process environment.

    The process environment wins (as with docker compose), so an operator can override one
    value for one run without editing the file.
    """
    values = load_env_file(env_file) if env_file is not None else {}
    values.update(os.environ if environ is None else environ)
    return values


def placeholders(text: str) -> set[str]:
    """Names of all ``${NAME}`` placeholders in ``text`` (with or without a default)."""
    return {m.group(1) for m in _PLACEHOLDER.finditer(text) if m.group(1)}


def _fill(text: str, env: Mapping[str, str], missing: list[str]) -> str:
    def repl(match: re.Match[str]) -> str:
        if match.group(0) == "$$":
            return "$"
        name, default = match.group(1), match.group(2)
        if name in env:
            return env[name]
        if default is not None:
            return default
        if name not in missing:
            missing.append(name)
        return ""

    return _PLACEHOLDER.sub(repl, text)


def _missing_error(source: str, missing: list[str]) -> ConfigError:
    return ConfigError(
        f"{source}: no value for {', '.join(missing)}: set "
        f"{'it' if len(missing) == 1 else 'them'} in the environment or in the --env-file "
        "(see .env.example)"
    )


def substitute(text: str, env: Mapping[str, str], source: str) -> str:
    """Replace every placeholder in ``text``; raise naming all variables that have no value.

    An empty value counts as set (``${REDIS_PASSWORD:-}`` renders as empty); a variable without
    default that is unset is an error, never an empty string, so a forgotten secret cannot
    start a server with a blank key.
    """
    missing: list[str] = []
    rendered = _fill(text, env, missing)
    if missing:
        raise _missing_error(source, missing)
    return rendered


def _typed(value: str) -> Any:
    """The plain YAML type of a substituted value, only where the text round-trips exactly.

    ``"7880"`` becomes 7880 and ``"false"`` False, but ``"+15550100"`` or ``"0755"`` stay text:
    YAML would read them as numbers and lose the ``+`` or the leading zero.
    """
    text = value.strip()
    if text == "":
        return None
    if text in ("true", "false"):
        return text == "true"
    if re.fullmatch(r"-?[1-9][0-9]*|0", text):
        return int(text)
    return value


def substitute_tree(data: Any, env: Mapping[str, str], source: str) -> Any:
    """Substitute placeholders inside the string scalars of already-parsed YAML.

    Working on the parsed tree (not the text) means a value can never change the document's
    structure (a password containing ``": "`` stays one string). A scalar that is exactly one
    placeholder takes the YAML type of its value (``port: ${P}`` becomes an int, as the Go
    binaries require); a placeholder inside a longer string stays text.
    """
    missing: list[str] = []

    def walk(node: Any) -> Any:
        if isinstance(node, dict):
            return {walk(k): walk(v) for k, v in node.items()}
        if isinstance(node, list):
            return [walk(v) for v in node]
        if not isinstance(node, str) or "$" not in node:
            return node
        filled = _fill(node, env, missing)
        whole = _PLACEHOLDER.fullmatch(node)
        if whole is not None and whole.group(1):
            return _typed(filled)
        return filled

    result = walk(data)
    if missing:
        raise _missing_error(source, missing)
    return result
