#!/usr/bin/env bash
# Sets up (idempotently) and runs every check: ruff, mypy and the whole pytest suite, including
# the integration tests against real livekit-server, livekit-sip, redis and the bundled models.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PATH="$root/.tools/bin:$root/.venv/bin:$PATH"
echo "[test] ruff"; ruff check worker tests scripts docker && ruff format --check worker tests scripts docker
echo "[test] mypy"; mypy
echo "[test] pytest"; exec pytest -q -rs "$@"
