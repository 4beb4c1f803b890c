"""Load YAML files into pydantic models with error messages an operator can act on.

Every model used with these functions should set ``extra="forbid"`` so that a typo in a key is
an error, never silently ignored.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, TypeVar

import yaml
from pydantic import BaseModel, ValidationError

__all__ = ["ConfigError", "load_model", "parse_model"]

M = TypeVar("M", bound=BaseModel)


class ConfigError(ValueError):
    """A configuration file is missing, unparsable or invalid. The message names file and key."""


def _format_validation(source: str, err: ValidationError) -> str:
    lines = [f"{source}: invalid configuration:"]
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(top level)"
        lines.append(f"  - {where}: {item['msg']}")
    return "\n".join(lines)


def parse_model(data: Any, model: type[M], source: str = "<config>") -> M:
    """Validate already-parsed data against ``model``; raise :class:`ConfigError` on failure."""
    if data is None:
        data = {}
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise ConfigError(_format_validation(source, err)) from None


def load_model(path: str | Path, model: type[M]) -> M:
    """Read a YAML file and validate it against ``model``."""
    path = Path(path)
    try:
        text = path.read_text(encoding="utf-8")
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    try:
        data = yaml.safe_load(text)
    except yaml.YAMLError as err:
        mark = getattr(err, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark else ""
        raise ConfigError(f"{path}: not valid YAML{where}: {err}") from None
    if data is not None and not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level, got {type(data).__name__}")
    return parse_model(data, model, str(path))
