#!/bin/sh
# Entry point of the voicestack images. One word picks the role; compose passes it as command.
#   inference   check the model set is installed and verified, then serve on 0.0.0.0:8765
#   agent       the livekit-agents worker (SIGTERM drains live calls)
#   render      validate and render livekit-server.yaml / sip-config.yaml into /rendered
#   provision   create/update SIP trunks and dispatch rules (idempotent)
#   download    python -m worker.models.download ... --models-dir /models
#   health-inference | health-agent   container health checks
# Anything else is executed as given.
set -eu

root=/app
role=${1:-}
[ $# -gt 0 ] && shift

http_ok() {  # url: exit 0 on a 2xx answer
  python -c 'import sys, urllib.request; urllib.request.urlopen(sys.argv[1], timeout=3)' "$1"
}

case "$role" in
  inference)
    set_name=${VOICESTACK_MODEL_SET:?set VOICESTACK_MODEL_SET (a set in models/manifest.toml)}
    # Fast (no hashing): files present and verified by the downloader. A clear error otherwise.
    python -m worker.models.download "$set_name" --check --models-dir "${VOICESTACK_MODELS_DIR:-/models}"
    exec voicestack inference-server \
      --config "${INFERENCE_CONFIG:-$root/deploy/config/inference.gpu.yaml}" \
      --host 0.0.0.0 --port "${INFERENCE_PORT:-8765}" "$@"
    ;;
  agent)
    # The shared config/agent.yaml with the health port fixed (each replica has its own network
    # namespace), so that the container health check knows where to look.
    python "$root/docker/agent_config.py" "${AGENT_CONFIG:-$root/config/agent.yaml}" /tmp/agent.yaml
    exec voicestack agent start --config /tmp/agent.yaml \
      --inference-url "${INFERENCE_URL:?set INFERENCE_URL, e.g. http://inference:8765}" "$@"
    ;;
  render)
    voicestack check-config --profile prod --root "$root"
    exec python "$root/docker/render_configs.py" --root "$root" "${RENDER_DIR:-/rendered}"
    ;;
  provision)
    exec voicestack provision --profile prod --root "$root" "$@"
    ;;
  download)
    exec python -m worker.models.download "$@" --models-dir "${VOICESTACK_MODELS_DIR:-/models}"
    ;;
  health-inference)
    http_ok "http://127.0.0.1:${INFERENCE_PORT:-8765}/readyz"
    ;;
  health-agent)
    http_ok "http://127.0.0.1:${AGENT_HEALTH_PORT:-8081}/"
    ;;
  "")
    echo "usage: entrypoint.sh inference|agent|render|provision|download|health-*|COMMAND..." >&2
    exit 2
    ;;
  *)
    exec "$role" "$@"
    ;;
esac
