"""Which processes make up the stack, in which order, with which health checks.

:func:`build_plan` turns a rendered stack (see :mod:`worker.stack.render`) and a list of
component names into ordered :class:`ProcessSpec` objects. Components beyond the LiveKit core
(the inference server, agent workers) register a builder in :data:`COMPONENT_BUILDERS`, so
``voicestack up --components ...`` and the demo start them the same way.
"""

from __future__ import annotations

import ipaddress
import shutil
import signal
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

from worker.config.telephony import TelephonyConfig, load_telephony
from worker.stack.process import HealthCheck, PortSpec, ProcessSpec
from worker.stack.render import RenderedStack, RunFiles, project_root

__all__ = [
    "COMPONENT_BUILDERS",
    "CORE_COMPONENTS",
    "RELAY_FLAGS",
    "SIP_COMPONENTS",
    "SIP_UNAVAILABLE",
    "PlanContext",
    "PlanError",
    "build_plan",
    "edge_binary",
    "relay_binary",
    "rtp_relay_argv",
    "sip_edge_defines",
    "tool_path",
    "voicestack_argv",
]

SIP_UNAVAILABLE = (
    "livekit-sip v1.11.0 is not installed: scripts/setup.sh installs it (go install, or the "
    "checked prebuilt ../shared/tools/livekit-sip where the Go module proxy refuses it)"
)


class PlanError(RuntimeError):
    """The requested components cannot be planned (unknown name, missing binary)."""


@dataclass(frozen=True)
class PlanContext:
    """Everything a component builder may need."""

    stack: RenderedStack
    files: RunFiles
    tools_dir: Path

    @property
    def run_dir(self) -> Path:
        return self.files.run_dir


def tool_path(name: str, tools_dir: Path | None = None) -> Path:
    """Project-local binary (``.tools/bin/<name>``), where setup.sh builds LiveKit."""
    return (tools_dir or project_root() / ".tools" / "bin") / name


def voicestack_argv(*args: str) -> tuple[str, ...]:
    """Command line that runs a ``voicestack`` sub-command with this interpreter."""
    return (sys.executable, "-m", "worker.cli", *args)


def _redis(ctx: PlanContext) -> ProcessSpec:
    host, port = ctx.stack.redis_address
    return ProcessSpec(
        name="redis",
        argv=("redis-server", str(ctx.files.redis_config)),
        health=HealthCheck("redis", host, port),
        start_timeout_s=10,
        ports=(PortSpec(host, port),),
    )


def _livekit(ctx: PlanContext) -> ProcessSpec:
    stack = ctx.stack
    rtc = stack.livekit.get("rtc") or {}
    ports = [PortSpec(stack.livekit_host, stack.livekit_port)]
    # bind_addresses only applies to the HTTP API: livekit-server binds ICE/TCP on all
    # interfaces and the RTC UDP port on every interface address (verified with ss).
    if rtc.get("tcp_port"):
        ports.append(PortSpec("0.0.0.0", int(rtc["tcp_port"])))
    udp = str(rtc.get("udp_port") or "")
    if udp.isdigit():
        ports.append(PortSpec("0.0.0.0", int(udp), "udp"))
    return ProcessSpec(
        name="livekit",
        argv=(
            str(tool_path("livekit-server", ctx.tools_dir)),
            "--config",
            str(ctx.files.livekit_config),
        ),
        # Keys reach livekit-server through its environment, never through a file on disk.
        env={"LIVEKIT_KEYS": f"{stack.api_key}: {stack.api_secret}"},
        health=HealthCheck("http", stack.livekit_host, stack.livekit_port, "/"),
        start_timeout_s=30,
        # SIGTERMed right after start, livekit-server can hang; its second signal forces it.
        repeat_stop_signal=True,
        ports=tuple(ports),
    )


def _sip(ctx: PlanContext) -> ProcessSpec:
    stack = ctx.stack
    binary = tool_path("livekit-sip", ctx.tools_dir)
    if not binary.exists():
        raise PlanError(
            f"{SIP_UNAVAILABLE} ({binary} is missing); start without it with "
            "--components redis,livekit"
        )
    port = stack.sip_address[1]
    listen = str(stack.sip.get("listen_ip") or "0.0.0.0")
    health_port = stack.sip_health_port
    if not health_port:
        raise PlanError("sip-config.yaml: health_port must be set so `up` can tell sip is ready")
    return ProcessSpec(
        name="sip",
        argv=(str(binary), "--config", str(ctx.files.sip_config)),
        env={
            "LIVEKIT_API_KEY": stack.api_key,
            "LIVEKIT_API_SECRET": stack.api_secret,
        },
        # livekit-sip binds its health port on all interfaces. It answers 429 while the
        # machine's CPU use is above max_cpu_utilization (0.9): running, but refusing
        # outbound calls. On a loaded 2-core box that is common, and it is still "up".
        health=HealthCheck("http", "127.0.0.1", health_port, "/", ok_statuses=(200, 429)),
        start_timeout_s=30,
        # SIGTERM makes livekit-sip wait for active calls to end; SIGINT ends them now.
        # The supervisor's SIGKILL after stop_timeout_s bounds it either way.
        stop_signal=signal.SIGINT,
        ports=(
            PortSpec(listen, port, "udp"),
            PortSpec(listen, port, "tcp"),
            PortSpec("0.0.0.0", health_port, "tcp"),
        ),
    )


def _host_cidr(host: str) -> str:
    ip = ipaddress.ip_address(host)
    return f"{host}/{ip.max_prefixlen}"


def edge_binary() -> Path:
    """Debian's kamailio (``/usr/sbin`` may be missing from a user's PATH)."""
    return Path(shutil.which("kamailio") or "/usr/sbin/kamailio")


def relay_binary() -> Path:
    """Debian's rtpengine (``rtpengine-daemon``), the media relay."""
    return Path(shutil.which("rtpengine") or "/usr/bin/rtpengine")


def rtp_relay_argv(stack: RenderedStack, pidfile: Path) -> list[str]:
    """rtpengine in the foreground, in userspace (no kernel module, no root), with no config
    file (it would otherwise read /etc/rtpengine and open its CLI and HTTP ports): media on
    ``stack.rtp_relay_ip`` within ``stack.rtp_relay_ports``, controlled over loopback only."""
    low, high = stack.rtp_relay_ports
    ng_host, ng_port = stack.rtp_relay_control
    return [
        str(relay_binary()),
        "--config-file=none",
        "--foreground",
        "--log-stderr",
        "--log-level=4",  # warnings and errors; 6 logs every call's setup
        "--table=-1",  # userspace forwarding: no kernel module or iptables rule
        f"--interface={stack.rtp_relay_ip}",
        f"--listen-ng={ng_host}:{ng_port}",
        f"--port-min={low}",
        f"--port-max={high}",
        "--num-threads=2",
        # A deleted call's ports are free at once (the default keeps them 30 s for stray
        # retransmissions; a BYE's retransmission is answered by the edge's transaction).
        "--delete-delay=0",
        f"--pidfile={pidfile}",
    ]


# rtpengine's flags on every offer and answer (sip-edge.cfg, route[MEDIA_OFFER], says why each).
# "endpoint-learning-off" must be this flag: rtpengine 10.5 ignores the key form
# "endpoint-learning=off" without a word.
_RELAY_COMMON = ("replace-origin", "replace-session-connection", "ICE=remove", "strict-source")
RELAY_FLAGS: dict[str, tuple[str, ...]] = {
    "strict": (*_RELAY_COMMON, "endpoint-learning-off"),
    "learn": _RELAY_COMMON,
}
"""The relay's flags for each ``sip_edge.media_relay`` mode but ``off``."""


def sip_edge_defines(stack: RenderedStack, tel: TelephonyConfig) -> dict[str, str]:
    """The ``-A NAME=value`` settings of ``sip-edge.cfg`` for this stack: where it listens,
    livekit-sip as its upstream, the trunks' sources it admits, the limits of ``tel.sip_edge``
    and, with ``media_relay``, the relay's control socket (string values keep kamailio's double
    quotes; ``WITH_MEDIA_RELAY`` has no value, it switches the relay routes on)."""
    host, port = stack.sip_edge_address
    up_host, up_port = str(stack.sip.get("listen_ip") or "127.0.0.1"), stack.sip_address[1]
    if up_host in {"0.0.0.0", "::"}:
        up_host = "127.0.0.1"  # the edge reaches a wildcard listener over loopback
    upstream = f"[{up_host}]:{up_port}" if ":" in up_host else f"{up_host}:{up_port}"
    settings = tel.sip_edge
    defines = {
        "LISTEN_ADDR": f"[{host}]" if ":" in host else host,
        "LISTEN_PORT": str(port),
        "UPSTREAM": f'"{upstream}"',
        "UPSTREAM_NETS": f'"{_host_cidr(up_host)}"',
        "ALLOW_NETS": '"' + ",".join(tel.edge_allowed_sources()) + '"',
        # No outbound trunk through the edge: livekit-sip's own address, admitted anyway.
        "OUTBOUND_NETS": '"' + ",".join(tel.edge_outbound_peers() or [_host_cidr(up_host)]) + '"',
        "PIKE_DENSITY": str(settings.max_requests_per_source),
        "PIKE_SAMPLING": str(settings.window_s),
        "MAX_MSG_LEN": str(settings.max_message_bytes),
    }
    if settings.media_relay != "off":
        ng_host, ng_port = stack.rtp_relay_control
        defines["WITH_MEDIA_RELAY"] = ""
        defines["RTPENGINE_SOCK"] = f'"udp:{ng_host}:{ng_port}"'
        defines["RELAY_FLAGS"] = '"' + " ".join(RELAY_FLAGS[settings.media_relay]) + '"'
    return defines


def _sip_edge(ctx: PlanContext) -> ProcessSpec:
    """Kamailio with ``sip-edge.cfg``: the only SIP listener callers reach; it forwards to
    livekit-sip what the trunks allow (docs/security.md)."""
    stack = ctx.stack
    binary = edge_binary()
    if not binary.exists():
        raise PlanError(
            "kamailio (the SIP edge) is not installed: scripts/setup.sh installs the Debian "
            "package; start without it with --components redis,livekit,sip"
        )
    host, port = stack.sip_edge_address
    runtime = ctx.run_dir / "sip-edge"
    runtime.mkdir(mode=0o700, exist_ok=True)
    argv = [str(binary), "-f", str(stack.root / "sip-edge.cfg"), "-DD", "-E", "-m", "32", "-M", "4"]
    argv += ["-Y", str(runtime), "-P", str(runtime / "kamailio.pid")]
    tel = load_telephony(stack.telephony_path, stack.env)
    for name, value in sip_edge_defines(stack, tel).items():
        argv += ["-A", f"{name}={value}" if value else name]
    check_host = "127.0.0.1" if host == "0.0.0.0" else host
    return ProcessSpec(
        name="sip-edge",
        argv=tuple(argv),
        health=HealthCheck("tcp", check_host, port),
        start_timeout_s=15,
        ports=(PortSpec(host, port, "udp"), PortSpec(host, port, "tcp")),
    )


def _rtp_relay(ctx: PlanContext) -> ProcessSpec:
    """rtpengine: every inbound call's RTP passes through it, and it drops packets from any
    address:port but the one each side announced (the SIP edge asks it to, per call)."""
    stack = ctx.stack
    if not relay_binary().exists():
        raise PlanError(
            "rtpengine (the media relay) is not installed: scripts/setup.sh installs Debian's "
            "rtpengine-daemon; or set sip_edge.media_relay: false in config/telephony.yaml"
        )
    runtime = ctx.run_dir / "rtp-relay"
    runtime.mkdir(mode=0o700, exist_ok=True)
    pidfile = runtime / "rtpengine.pid"
    pidfile.unlink(missing_ok=True)  # rtpengine refuses to start over a stale pidfile
    ng_host, ng_port = stack.rtp_relay_control
    return ProcessSpec(
        name="rtp-relay",
        argv=tuple(rtp_relay_argv(stack, pidfile)),
        health=HealthCheck("rtpengine", ng_host, ng_port),
        start_timeout_s=15,
        ports=(PortSpec(ng_host, ng_port, "udp"),),
    )


# name -> builder. Order of this mapping is the start order; shutdown is the reverse. To add a
# component (e.g. the inference server, then the agent), register it at import time of your
# module:  COMPONENT_BUILDERS["inference"] = build_inference_spec  (a PlanContext -> ProcessSpec
# function; use voicestack_argv("inference-server", ...) and a HealthCheck on GET /readyz).
COMPONENT_BUILDERS: dict[str, Callable[[PlanContext], ProcessSpec]] = {
    "redis": _redis,
    "livekit": _livekit,
    "sip": _sip,
    "rtp-relay": _rtp_relay,
    "sip-edge": _sip_edge,
}
CORE_COMPONENTS: tuple[str, ...] = ("redis", "livekit", "sip", "rtp-relay", "sip-edge")
SIP_COMPONENTS = CORE_COMPONENTS
"""What a SIP call needs: LiveKit, livekit-sip, and the edge (signalling) and relay (media)
callers reach it through."""


def build_plan(
    stack: RenderedStack,
    files: RunFiles,
    components: Sequence[str] = CORE_COMPONENTS,
    tools_dir: Path | None = None,
) -> list[ProcessSpec]:
    """Ordered specs for ``components`` (start order follows :data:`COMPONENT_BUILDERS`)."""
    unknown = [c for c in components if c not in COMPONENT_BUILDERS]
    if unknown:
        raise PlanError(
            f"unknown component(s) {', '.join(unknown)}; known: {', '.join(COMPONENT_BUILDERS)}"
        )
    ctx = PlanContext(stack=stack, files=files, tools_dir=tools_dir or tool_path("x").parent)
    return [build(ctx) for name, build in COMPONENT_BUILDERS.items() if name in components]
