#!/bin/bash
# Start kamailio in the foreground with every line of the rendered defines as -A NAME=value.
set -euo pipefail
defines=${SIP_EDGE_DEFINES:-/rendered/sip-edge.defines}
if [[ ! -s $defines ]]; then
  echo "sip-edge: $defines is missing or empty (sip_edge.enabled false, or render did not run)" >&2
  exit 2
fi
mapfile -t lines < "$defines"
args=()
for line in "${lines[@]}"; do
  [[ -n $line ]] && args+=(-A "$line")
done
runtime=$(mktemp -d /tmp/kamailio.XXXXXX)
exec kamailio -f /etc/voicestack/sip-edge.cfg -DD -E -m 32 -M 4 \
  -Y "$runtime" -P "$runtime/kamailio.pid" "${args[@]}"
