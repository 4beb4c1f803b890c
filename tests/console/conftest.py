"""Fixtures of the console tests: a real redis-server per module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
from console_support import redis_server


@pytest.fixture(scope="module")
def redis_url() -> Iterator[str]:
    """A real redis-server on a free loopback port (stopped after the module)."""
    with redis_server() as url:
        yield url
