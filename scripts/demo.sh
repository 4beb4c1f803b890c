#!/usr/bin/env bash
# Sets up (idempotently) and runs the main job: the whole stack on loopback with the bundled
# models, and a real SIP call from a scripted caller; prints transcript and per-turn latency.
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$root"
bash scripts/setup.sh
export HF_HUB_OFFLINE=1 PATH="$root/.tools/bin:$root/.venv/bin:$PATH"
exec voicestack demo "$@"
