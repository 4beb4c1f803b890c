#!/bin/bash
# Start the media relay (rtpengine, userspace) with the command line `render` wrote, one
# argument per line (worker/stack/plan.py::rtp_relay_argv, the same as `voicestack up` runs).
set -euo pipefail
args_file=${RTP_RELAY_ARGS:-/rendered/rtp-relay.args}
if [[ ! -s $args_file ]]; then
  echo "rtp-relay: $args_file is missing or empty (sip_edge.media_relay false, or render did not run)" >&2
  exit 2
fi
mapfile -t argv < "$args_file"
rm -f /tmp/rtpengine.pid  # a restarted container keeps /tmp; rtpengine refuses a stale pidfile
exec "${argv[@]}"
