"""How the worker's Prometheus endpoint sees metrics recorded in its job processes.

livekit-agents runs every call in its own job process, while ``AgentServer(prometheus_port=...)``
serves ``/metrics`` from the main process. Its handler switches to prometheus_client's
multiprocess mode (a ``MultiProcessCollector`` over ``PROMETHEUS_MULTIPROC_DIR``) when that
variable is set; without it, only the main process's own registry is served and per-turn
histograms recorded in job processes never appear. The worker empties the directory when it
starts; histogram files of finished job processes stay, so their observations keep counting.
"""

from __future__ import annotations

import os
import tempfile

from prometheus_client import values

__all__ = ["MULTIPROC_ENV", "enable_multiprocess"]

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"


def enable_multiprocess() -> tuple[str, bool]:
    """Turn on multiprocess mode for this process and the job processes it will start.

    Keeps an existing ``PROMETHEUS_MULTIPROC_DIR`` (a container may mount one), else makes a
    private temporary directory. Returns ``(directory, created)``; whoever created it removes
    it on exit. Call before livekit-agents is imported and before any metric records a value.
    """
    path = os.environ.get(MULTIPROC_ENV)
    created = not path
    if not path:
        path = tempfile.mkdtemp(prefix="voicestack-agent-metrics-")
    os.environ[MULTIPROC_ENV] = path
    # prometheus_client picks its value store once, at its first import, and the voicestack CLI
    # imports it (through other commands' modules) before any command runs: re-pick it so values
    # made from now on in this process (livekit's labelled lk_agents_* gauges, e.g. the worker
    # load) are written to the directory too. Job processes start fresh and read the variable.
    values.ValueClass = values.get_value_class()
    return path, created
