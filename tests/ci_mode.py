"""The one rule for tests whose prerequisite (a binary, a Debian package) is missing: with
``CI=true`` (how ``.ci/run`` runs in CI) every test must run, so the test fails; elsewhere it
skips, saying what to install."""

from __future__ import annotations

import os
from typing import NoReturn

import pytest

__all__ = ["in_ci", "missing"]


def in_ci() -> bool:
    """CI runs ``.ci/run`` with ``CI=true``: there, every test must run."""
    return os.environ.get("CI", "").lower() == "true"


def missing(message: str) -> NoReturn:
    """A prerequisite is missing: fail under ``CI=true`` (a skip would hide a broken setup),
    skip elsewhere."""
    if in_ci():
        pytest.fail(message)
    pytest.skip(message)
