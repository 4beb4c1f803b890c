"""Each native engine (CTranslate2, llama.cpp, onnxruntime) loads the configured model and runs
one real step in a subprocess of its own (``voicestack inference-selftest``), before any test
loads an engine in-process: a native crash on this CPU (say, a kernel built for AMX or AVX-512
that this machine lacks) fails this test with the signal's name, and the session stops with
that message instead of dying mid-run."""

from __future__ import annotations

import pytest

from worker.inference.selftest import ENGINES, check_engine
from worker.stack.render import project_root

pytestmark = [pytest.mark.integration, pytest.mark.native]


@pytest.mark.parametrize("engine", ENGINES)
def test_engine_runs_a_step_in_a_subprocess(engine: str) -> None:
    result = check_engine(engine, str(project_root() / "config" / "inference.yaml"))
    assert result.ok, f"{engine} engine: {result.detail}"
    assert "one step ok" in result.detail


def test_a_native_crash_is_reported_with_its_signal(monkeypatch: pytest.MonkeyPatch) -> None:
    """What the check says when the child dies of a signal (simulated: the child kills itself
    with SIGSEGV, as a crashing native kernel would)."""
    import subprocess
    import sys

    real_run = subprocess.run

    def crashing(cmd: list[str], **kw: object) -> subprocess.CompletedProcess[str]:
        code = "import os, signal; os.kill(os.getpid(), signal.SIGSEGV)"
        return real_run([sys.executable, "-c", code], **kw)  # type: ignore[call-overload,no-any-return]

    monkeypatch.setattr(subprocess, "run", crashing)
    result = check_engine("llm", "config/inference.yaml")
    assert not result.ok
    assert result.detail.startswith("native crash: killed by SIGSEGV")
