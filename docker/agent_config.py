"""Write the agent config with its health port and address fixed, for the container.

``config/agent.yaml`` uses ``worker.http_port: 0`` (a free port: several workers may share a
host in dev) on 127.0.0.1. In compose each agent replica has its own network namespace, so the
image pins the port (``AGENT_HEALTH_PORT``, default 8081) and listens on all of the container's
interfaces: livekit-agents serves health and ``/metrics`` (the Prometheus port) on that one
address, and Prometheus scrapes every replica over the compose network. Everything else stays
as in the shared file.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

import yaml

from worker.config.agent import load_agent_config, load_call_flows, rebase_flows
from worker.config.loader import ConfigError


def main(argv: list[str]) -> int:
    """``agent_config.py SOURCE TARGET``; exit 2 with the config error when SOURCE is invalid."""
    if len(argv) != 2:
        print("usage: agent_config.py SOURCE TARGET", file=sys.stderr)
        return 2
    source, target = Path(argv[0]), Path(argv[1])
    try:
        load_agent_config(source)  # the shared file itself must be valid
        data = yaml.safe_load(source.read_text(encoding="utf-8")) or {}
        rebase_flows(data, source)
        worker = data.setdefault("worker", {})
        worker["http_port"] = int(os.environ.get("AGENT_HEALTH_PORT", "8081"))
        worker["http_host"] = "0.0.0.0"
        target.write_text(yaml.safe_dump(data, sort_keys=False), encoding="utf-8")
        load_call_flows(load_agent_config(target), target)
    except (ConfigError, ValueError) as err:
        print(f"agent config: {err}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
