#!/usr/bin/env bash
# Download a model set from models/manifest.toml into models/ (or --models-dir), verified by
# sha256, resumable, never leaving a partial file under a final name. Examples:
#   scripts/download_models.sh --list
#   scripts/download_models.sh gpu-en                      # from the URLs in the manifest
#   scripts/download_models.sh gpu-en --mirror /mnt/usb/models     # air-gapped: a local copy
#   scripts/download_models.sh gpu-en --mirror http://10.0.0.5/models  # internal HTTP mirror
#   scripts/download_models.sh gpu-en --verify             # re-hash what is there
# Needs Python >= 3.11 and nothing else (standard library only): no virtualenv, no docker.
set -euo pipefail

root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)

pick_python() {
  local candidate
  for candidate in "${VOICESTACK_PYTHON:-}" "$root/.venv/bin/python" python3.13 python3.12 python3.11 python3; do
    [[ -n $candidate ]] || continue
    command -v "$candidate" >/dev/null 2>&1 || continue
    if "$candidate" -c 'import sys; sys.exit(sys.version_info < (3, 11))' 2>/dev/null; then
      echo "$candidate"
      return 0
    fi
  done
  return 1
}

if ! python=$(pick_python); then
  cat >&2 <<MSG
error: Python >= 3.11 is required to download models (it reads TOML with the standard library).
Install python3.11 (or newer), or set VOICESTACK_PYTHON to one, or run the downloader from the
worker image:  docker compose -f docker-compose.gpu.yml run --rm models-download <set>
MSG
  exit 2
fi

# worker.models.manifest/download use only the standard library: no install needed, just this
# checkout on the import path.
export PYTHONPATH="$root${PYTHONPATH:+:$PYTHONPATH}"
export HF_HUB_OFFLINE=1
exec "$python" -m worker.models.download "$@"
