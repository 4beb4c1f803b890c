"""Render the shipped livekit-server.yaml and sip-config.yaml for production into a directory,
the SIP edge's settings (``sip-edge.defines``) and the media relay's command line
(``rtp-relay.args``).

Run by the compose ``render`` service (``entrypoint.sh render``) before livekit-server and
livekit-sip start: neither binary expands ``${VAR}`` in its YAML, so the same files as in dev
are filled from the environment (the compose env file) by voicestack's own renderer. API keys
stay out of the files: livekit-server gets them as LIVEKIT_KEYS, livekit-sip as
LIVEKIT_API_KEY / LIVEKIT_API_SECRET, both from the env file.
"""

from __future__ import annotations

import argparse
import os
import sys
from pathlib import Path

from worker.config.loader import ConfigError
from worker.config.stack import Profile
from worker.config.telephony import load_telephony
from worker.stack.plan import rtp_relay_argv, sip_edge_defines
from worker.stack.render import render_stack, write_run_files


def main(argv: list[str] | None = None) -> int:
    """Render into the given directory; exit 2 with the renderer's message on a config error."""
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("out", type=Path, help="directory for the rendered files")
    parser.add_argument("--root", type=Path, default=None, help="directory of the shipped YAMLs")
    args = parser.parse_args(argv)
    try:
        stack = render_stack(Profile.PROD, os.environ, root=args.root)
    except ConfigError as err:
        print(f"render: {err}", file=sys.stderr)
        return 2
    # The rendered files carry the Redis password; never the API keys (see module docstring):
    # outside the loopback profile write_run_files writes no credentials file.
    files = write_run_files(stack, args.out)
    print(f"render: wrote {files.livekit_config} and {files.sip_config}")
    # The SIP edge's settings (docker/sip-edge.Dockerfile passes each line as -A NAME=value).
    # The media relay's command line (docker/rtp-relay.sh runs it), one argument per line.
    try:
        tel = load_telephony(stack.telephony_path, os.environ)
        edge_on = tel.sip_edge.enabled
        relay_on = edge_on and tel.sip_edge.media_relay != "off"
        defines = sip_edge_defines(stack, tel) if edge_on else {}
        relay = rtp_relay_argv(stack, Path("/tmp/rtpengine.pid")) if relay_on else []
    except ConfigError as err:
        print(f"render: {err}", file=sys.stderr)
        return 2
    edge = args.out / "sip-edge.defines"
    edge.write_text(
        "".join(f"{k}={v}\n" if v else f"{k}\n" for k, v in defines.items()), encoding="utf-8"
    )
    print(f"render: wrote {edge}" + ("" if edge_on else " (empty: sip_edge.enabled is false)"))
    args_file = args.out / "rtp-relay.args"
    args_file.write_text("".join(f"{a}\n" for a in relay), encoding="utf-8")
    print(f"render: wrote {args_file}" + ("" if relay_on else " (empty: no media relay)"))
    return 0


if __name__ == "__main__":
    sys.exit(main())
