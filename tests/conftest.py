"""Shared fixtures: the real LiveKit stack on loopback, and the ``sip`` marker's skip rule.

``livekit_stack`` (session scope) starts redis + livekit-server (+ livekit-sip when its binary
exists) from the real binaries on free 127.0.0.1 ports, renders the shipped configs for the
loopback profile, and yields a :class:`worker.stack.loopback.LoopbackStack` (URLs, API key
pair, SIP address). Tests that need livekit-sip are marked ``@pytest.mark.sip``; outside CI
they are the only tests skipped for a missing binary, with the reason below. With ``CI=true``
nothing may be skipped: a missing livekit-sip fails those tests, and any skip at all fails the
run (a skip there hides a broken setup). Anything else that misses a binary or model fails.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from pathlib import Path

import pytest
from ci_mode import in_ci

from worker.config.telephony import TelephonyConfig
from worker.process_exit import exit_process, rtc_runtime_live
from worker.stack.loopback import LoopbackStack, loopback_stack
from worker.stack.plan import SIP_COMPONENTS, SIP_UNAVAILABLE, edge_binary, tool_path
from worker.telephony.provision import ProvisionResult, provision_loopback

os.environ.setdefault("HF_HUB_OFFLINE", "1")

SIP_BINARY = tool_path("livekit-sip")


def sip_available() -> bool:
    """True when the project-local livekit-sip binary and the SIP edge (kamailio) exist."""
    return SIP_BINARY.is_file() and os.access(SIP_BINARY, os.X_OK) and edge_binary().exists()


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    # The subprocess engine checks run first: if a native engine crashes on this CPU, they say
    # so and the session stops, before any in-process engine test can take pytest down with it.
    items.sort(key=lambda item: "native" not in item.keywords)
    if sip_available() or in_ci():
        return  # in CI a missing livekit-sip fails the sip tests (setup.sh already refused it)
    skip = pytest.mark.skip(reason=SIP_UNAVAILABLE)
    for item in items:
        if "sip" in item.keywords:
            item.add_marker(skip)


def pytest_runtest_logreport(report: pytest.TestReport) -> None:
    if report.failed and "native" in report.keywords and "subprocess" in report.nodeid:
        _STOP.append(f"native engine check failed ({report.nodeid}): see its message")


_STOP: list[str] = []


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_protocol(item: pytest.Item) -> None:
    if _STOP:
        item.session.shouldstop = _STOP[0]


@pytest.hookimpl(trylast=True)
def pytest_sessionfinish(session: pytest.Session, exitstatus: int) -> None:
    """With ``CI=true`` a skipped test fails the run: a skip hides a broken setup."""
    if in_ci():
        reporter = session.config.pluginmanager.get_plugin("terminalreporter")
        skipped = reporter.stats.get("skipped", []) if reporter is not None else []
        if skipped:
            names = ", ".join(sorted({getattr(r, "nodeid", "?") for r in skipped})[:10])
            if reporter is not None:
                reporter.write_line(
                    f"CI=true: {len(skipped)} test(s) skipped, which CI forbids: {names}"
                )
            session.exitstatus = pytest.ExitCode.TESTS_FAILED
    session.config.stash[_EXIT_STATUS] = int(session.exitstatus)


_EXIT_STATUS = pytest.StashKey[int]()
"""The session's final exit status, for :func:`pytest_unconfigure`."""


@pytest.hookimpl(trylast=True)
def pytest_unconfigure(config: pytest.Config) -> None:
    """Leave without finalizing when a test loaded livekit.rtc in this process: its Rust threads
    abort the process (status 134) if they call back while CPython finalizes; see
    :mod:`worker.process_exit`. The session's own exit status is kept."""
    status = config.stash.get(_EXIT_STATUS, None)
    if rtc_runtime_live() and status is not None:
        exit_process(status)


@pytest.fixture(scope="session")
def livekit_stack(tmp_path_factory: pytest.TempPathFactory) -> Iterator[LoopbackStack]:
    """The real redis + livekit-server (+ livekit-sip if built) on loopback, for the session.

    Logs and rendered configs are in ``stack.run_dir`` (printed on failure by pytest's tmp
    path retention). Components stop in reverse order at the end of the session.
    """
    run_dir: Path = tmp_path_factory.mktemp("stack")
    components = SIP_COMPONENTS if sip_available() else ("redis", "livekit")
    with loopback_stack(run_dir, components) as stack:
        yield stack


@pytest.fixture(scope="session")
def sip_stack(livekit_stack: LoopbackStack) -> LoopbackStack:
    """``livekit_stack`` with livekit-sip running; use only in ``@pytest.mark.sip`` tests."""
    if livekit_stack.sip_address is None:
        pytest.fail(f"sip_stack used outside a sip-marked test: {SIP_UNAVAILABLE}")
    return livekit_stack


@pytest.fixture(scope="session")
def provisioned_stack(
    livekit_stack: LoopbackStack,
) -> tuple[LoopbackStack, TelephonyConfig, ProvisionResult]:
    """``livekit_stack`` with the shipped ``config/telephony.yaml`` provisioned (loopback values:
    trunk number +15550100, callers from 127.0.0.1/32, rule dispatching ``agent_name``)."""
    cfg, result = provision_loopback(livekit_stack)
    return livekit_stack, cfg, result
