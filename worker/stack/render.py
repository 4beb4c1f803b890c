"""Render the shipped production configs for a profile, and write them into a run directory.

Source of truth: the top-level ``livekit-server.yaml`` and ``sip-config.yaml`` and
``config/telephony.yaml``. A profile never has its own copy of them: ``prod``/``dev`` fill the
placeholders from the environment; ``loopback`` fills them with 127.0.0.1 and free ports and
applies the few overrides in :data:`LOOPBACK_OVERRIDES`, so tests run the same files that ship.
"""

from __future__ import annotations

import copy
import ipaddress
import os
import secrets
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

import yaml

from worker.config.loader import ConfigError
from worker.config.stack import Profile, substitute_tree
from worker.stack.ports import free_port, free_udp_range, free_udp_tcp_port

__all__ = [
    "LIVEKIT_CONFIG",
    "LOOPBACK_OVERRIDES",
    "SIP_CONFIG",
    "TELEPHONY_CONFIG",
    "RenderedStack",
    "RunFiles",
    "loopback_env",
    "project_root",
    "render_stack",
    "write_run_files",
]

LIVEKIT_CONFIG = "livekit-server.yaml"
SIP_CONFIG = "sip-config.yaml"
TELEPHONY_CONFIG = "config/telephony.yaml"

# What loopback changes beyond the placeholder values, and why:
# - livekit-server drops loopback ICE candidates unless told otherwise (everything is on lo);
# - livekit-sip keeps a closed call's RTP port "draining" for 30 s / 10 min by default, which
#   would exhaust the small RTP range a test run gets;
# - livekit-server's ICE/TCP listener binds every interface whatever the config says
#   (mediatransportutil's rtcconfig: net.ListenTCP with no IP), so loopback turns ICE/TCP off;
#   its UDP mux binds one socket per local address that passes rtc.ips, so loopback names
#   127.0.0.1 only. Nothing of a loopback stack listens beyond lo.
LOOPBACK_OVERRIDES: dict[str, dict[str, Any]] = {
    LIVEKIT_CONFIG: {
        "rtc": {
            "enable_loopback_candidate": True,
            "tcp_port": 0,
            "ips": {"includes": ["127.0.0.1/32"]},
        }
    },
    SIP_CONFIG: {"rtp_draining_idle_timeout": "1s", "rtp_draining_duration": "5s"},
}


def project_root() -> Path:
    """The checkout that holds the shipped configs (the parent of the ``worker`` package)."""
    return Path(__file__).resolve().parents[2]


def loopback_env(rtp_ports: int = 20) -> dict[str, str]:
    """Placeholder values for the loopback profile: 127.0.0.1 and freshly picked free ports.

    Each port is free for every protocol its listener binds (SIP: UDP and TCP) and differs from
    the others picked here: none is bound until the stack starts, so the kernel could otherwise
    offer the same one twice, or a UDP-free port that a TCP listener holds (seen in CI).
    """
    host = "127.0.0.1"
    taken: set[int] = set()

    def pick(proto: Literal["tcp", "udp", "both"]) -> int:
        while True:
            port = free_udp_tcp_port(host) if proto == "both" else free_port(host, proto)
            if port not in taken:
                taken.add(port)
                return port

    http = pick("tcp")
    rtp_start, rtp_end = free_udp_range(rtp_ports, host)
    while True:  # the two ranges are drawn at random from the same span: keep them apart
        relay_start, relay_end = free_udp_range(4 * rtp_ports, host)  # 4 ports per call
        if relay_end < rtp_start or relay_start > rtp_end:
            break
    redis_port = pick("tcp")
    return {
        "LIVEKIT_BIND_ADDRESS": host,
        "LIVEKIT_NODE_IP": host,
        "LIVEKIT_HTTP_PORT": str(http),
        "LIVEKIT_RTC_TCP_PORT": str(pick("tcp")),
        "LIVEKIT_RTC_UDP_PORT": str(pick("udp")),
        # No STUN server runs on loopback; the entry only keeps clients off public STUN.
        "LIVEKIT_STUN_SERVER": f"{host}:{pick('udp')}",
        "LIVEKIT_WS_URL": f"ws://{host}:{http}",
        "REDIS_ADDRESS": f"{host}:{redis_port}",
        "SIP_LISTEN_IP": host,
        "SIP_NAT_IP": host,
        "SIP_PORT": str(pick("both")),
        "SIP_HEALTH_PORT": str(pick("tcp")),
        "SIP_EDGE_LISTEN_IP": host,
        "SIP_EDGE_PORT": str(pick("both")),
        "SIP_RTP_PORT_RANGE": f"{rtp_start}-{rtp_end}",
        "RTP_RELAY_IP": host,
        "RTP_RELAY_PORT_RANGE": f"{relay_start}-{relay_end}",
        "RTP_RELAY_NG_PORT": str(pick("udp")),
    }


def _merge(base: dict[str, Any], override: Mapping[str, Any]) -> dict[str, Any]:
    out = copy.deepcopy(base)
    for key, value in override.items():
        if isinstance(value, Mapping) and isinstance(out.get(key), dict):
            out[key] = _merge(out[key], value)
        else:
            out[key] = copy.deepcopy(value)
    return out


def _read_yaml(path: Path) -> dict[str, Any]:
    try:
        data = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return data


def _split_hostport(value: Any, what: str) -> tuple[str, int]:
    text = str(value or "")
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit():
        raise ConfigError(f"{what}: expected host:port, got {text!r}")
    return host.strip("[]"), int(port)


@dataclass(frozen=True)
class RenderedStack:
    """The configs of one profile with every placeholder filled, plus what callers need."""

    profile: Profile
    root: Path
    livekit: dict[str, Any]
    sip: dict[str, Any]
    env: dict[str, str] = field(repr=False)
    api_key: str
    api_secret: str = field(repr=False)

    @property
    def livekit_host(self) -> str:
        """Address the LiveKit HTTP/WebSocket API listens on (first bind address)."""
        binds = self.livekit.get("bind_addresses") or ["127.0.0.1"]
        host = str(binds[0])
        return "127.0.0.1" if host in ("0.0.0.0", "") else host

    @property
    def livekit_port(self) -> int:
        return int(self.livekit.get("port") or 7880)

    @property
    def livekit_url(self) -> str:
        """``http://host:port`` of the LiveKit API (for livekit-api and health checks)."""
        return f"http://{self.livekit_host}:{self.livekit_port}"

    @property
    def ws_url(self) -> str:
        """WebSocket URL agents and livekit-sip connect to."""
        return f"ws://{self.livekit_host}:{self.livekit_port}"

    @property
    def redis_address(self) -> tuple[str, int]:
        return _split_hostport((self.livekit.get("redis") or {}).get("address"), "redis.address")

    @property
    def redis_password(self) -> str:
        return str((self.livekit.get("redis") or {}).get("password") or "")

    @property
    def sip_address(self) -> tuple[str, int]:
        """Where callers send INVITEs (the announced address and SIP port)."""
        host = self.sip.get("nat_1_to_1_ip") or self.sip.get("listen_ip") or "127.0.0.1"
        return str(host), int(self.sip.get("sip_port") or 5060)

    @property
    def sip_edge_address(self) -> tuple[str, int]:
        """Where the SIP edge listens (``SIP_EDGE_LISTEN_IP``, default every interface, and
        ``SIP_EDGE_PORT``, default 5060): with the edge, this is where callers send INVITEs."""
        host = self.env.get("SIP_EDGE_LISTEN_IP") or "0.0.0.0"
        return host, int(self.env.get("SIP_EDGE_PORT") or 5060)

    @property
    def sip_edge_target(self) -> tuple[str, int]:
        """Where livekit-sip, on this host, reaches the SIP edge (a wildcard listener over
        loopback): the address of outbound trunks that pass the edge."""
        host, port = self.sip_edge_address
        return ("127.0.0.1" if host in {"0.0.0.0", "::"} else host), port

    @property
    def rtp_relay_ip(self) -> str:
        """The address the media relay binds and writes into SDP: the PBX sends RTP there, so
        it is one concrete address: ``RTP_RELAY_IP``, else ``SIP_EDGE_LISTEN_IP`` unless that is
        a wildcard, else ``SIP_NAT_IP`` (the host's address livekit-sip announces)."""
        explicit = self.env.get("RTP_RELAY_IP")
        edge = self.env.get("SIP_EDGE_LISTEN_IP") or ""
        candidates = [explicit] if explicit else [edge, self.env.get("SIP_NAT_IP") or ""]
        for host in candidates:
            try:
                if not ipaddress.ip_address(host).is_unspecified:
                    return host
            except ValueError:
                if explicit:
                    break
        raise ConfigError(
            f"RTP_RELAY_IP: {explicit or edge or '(unset)'} is not one address the PBX can send "
            "media to (an IP, not a wildcard); set RTP_RELAY_IP"
        )

    @property
    def rtp_relay_ports(self) -> tuple[int, int]:
        """The relay's UDP range (``RTP_RELAY_PORT_RANGE``, default 30000-30999; 4 per call)."""
        text = self.env.get("RTP_RELAY_PORT_RANGE") or "30000-30999"
        low, sep, high = text.partition("-")
        if not sep or not low.isdigit() or not high.isdigit():
            raise ConfigError(f"RTP_RELAY_PORT_RANGE: expected LOW-HIGH, got {text!r}")
        first, last = int(low), int(high)
        if not 1024 <= first < last <= 65_535 or last - first < 3:
            raise ConfigError(
                f"RTP_RELAY_PORT_RANGE: {text!r} must be a range of at least 4 ports in 1024-65535"
            )
        return first, last

    @property
    def rtp_relay_control(self) -> tuple[str, int]:
        """The relay's control socket (rtpengine's ng protocol over UDP), on loopback: only the
        SIP edge on the same host drives it (``RTP_RELAY_NG_PORT``, default 2223)."""
        text = self.env.get("RTP_RELAY_NG_PORT") or "2223"
        if not text.isdigit() or not 1 <= int(text) <= 65_535:
            raise ConfigError(f"RTP_RELAY_NG_PORT: {text!r} is not a port number")
        return "127.0.0.1", int(text)

    @property
    def sip_health_port(self) -> int:
        return int(self.sip.get("health_port") or 0)

    @property
    def telephony_path(self) -> Path:
        return self.root / TELEPHONY_CONFIG


def render_stack(
    profile: Profile | str,
    env: Mapping[str, str],
    root: Path | None = None,
) -> RenderedStack:
    """Fill the shipped configs for ``profile`` from ``env``; raise :class:`ConfigError`.

    For ``loopback``, addresses and ports come from :func:`loopback_env` and an API key pair is
    generated when the environment has none.
    """
    profile = Profile(profile)
    root = root or project_root()
    values = dict(env)
    if profile is Profile.LOOPBACK:
        # Loopback addresses always win: a production .env must not leak into a test run.
        values = {**values, **loopback_env()}
        # The demo's caller: a "PBX" on loopback dialling the shipped trunk's number.
        values.setdefault("PBX_ADDRESS", "127.0.0.1/32")
        values.setdefault("PBX_NUMBER", "+15550100")
        # Loopback callers (baresip, sipp) send no digest credentials: a PBX password from the
        # operator's environment would lock them out of the shipped trunk.
        values.update(PBX_AUTH_USERNAME="", PBX_AUTH_PASSWORD="")
        values.setdefault("LIVEKIT_API_KEY", "API" + secrets.token_hex(6))
        values.setdefault("LIVEKIT_API_SECRET", secrets.token_urlsafe(36))
    rendered: dict[str, dict[str, Any]] = {}
    errors: list[str] = []
    for name in (LIVEKIT_CONFIG, SIP_CONFIG):  # report problems of both files at once
        try:
            rendered[name] = substitute_tree(_read_yaml(root / name), values, name)
        except ConfigError as err:
            errors.append(str(err))
    if errors:
        raise ConfigError("\n".join(errors))
    livekit, sip = rendered[LIVEKIT_CONFIG], rendered[SIP_CONFIG]
    if profile is Profile.LOOPBACK:
        livekit = _merge(livekit, LOOPBACK_OVERRIDES[LIVEKIT_CONFIG])
        sip = _merge(sip, LOOPBACK_OVERRIDES[SIP_CONFIG])
    missing = [n for n in ("LIVEKIT_API_KEY", "LIVEKIT_API_SECRET") if not values.get(n)]
    if missing:
        raise ConfigError(
            f"no value for {', '.join(missing)}: set them in the environment or in the "
            "--env-file (see .env.example)"
        )
    return RenderedStack(
        profile=profile,
        root=root,
        livekit=livekit,
        sip=sip,
        env=values,
        api_key=values["LIVEKIT_API_KEY"],
        api_secret=values["LIVEKIT_API_SECRET"],
    )


@dataclass(frozen=True)
class RunFiles:
    """Paths of the files rendered into a run directory."""

    run_dir: Path
    livekit_config: Path
    sip_config: Path
    redis_config: Path
    credentials: Path | None
    """``credentials.env`` (URL, API key and secret of the run): loopback only, where the key
    pair was generated for this run; other profiles take the keys from the operator's
    environment and never write them to disk."""

    @property
    def redis_data_dir(self) -> Path:
        """Redis's working directory: its append-only file and snapshots."""
        return self.run_dir / "redis"


def _write_private(path: Path, text: str) -> None:
    # Rendered files can hold the Redis password: readable by the owner only (livekit-server
    # also insists that key files are not world-readable).
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        fh.write(text)
    os.chmod(path, 0o600)


def write_run_files(stack: RenderedStack, run_dir: Path) -> RunFiles:
    """Write the rendered configs (and, loopback only, a credentials env file) into
    ``run_dir``, which is made owner-only: it holds secrets and the components' logs."""
    run_dir.mkdir(parents=True, exist_ok=True)
    os.chmod(run_dir, 0o700)
    header = f"# rendered by voicestack for profile {stack.profile.value}; do not edit\n"
    files = RunFiles(
        run_dir=run_dir,
        livekit_config=run_dir / "livekit-server.yaml",
        sip_config=run_dir / "sip-config.yaml",
        redis_config=run_dir / "redis.conf",
        credentials=run_dir / "credentials.env" if stack.profile is Profile.LOOPBACK else None,
    )
    _write_private(files.livekit_config, header + yaml.safe_dump(stack.livekit, sort_keys=False))
    _write_private(files.sip_config, header + yaml.safe_dump(stack.sip, sort_keys=False))
    host, port = stack.redis_address
    files.redis_data_dir.mkdir(mode=0o700, exist_ok=True)
    # LiveKit keeps SIP trunks and dispatch rules (what `voicestack provision` stored) in Redis
    # and nowhere else: persist every write, so a Redis the supervisor restarts after a crash
    # still has them. fsync per write costs nothing at this size (a handful of keys, rare
    # writes besides LiveKit's node and room bookkeeping). No RDB snapshots: the AOF suffices.
    redis_lines = [
        f"bind {host}",
        f"port {port}",
        "protected-mode yes",
        'save ""',
        "appendonly yes",
        "appendfsync always",
        f'dir "{files.redis_data_dir}"',
        "dbfilename dump.rdb",
    ]
    if stack.redis_password:
        redis_lines.append(f'requirepass "{stack.redis_password}"')
    _write_private(files.redis_config, "\n".join(redis_lines) + "\n")
    # For the other tools of this run (agent, provision, tests): where and how to connect.
    if files.credentials is not None:
        _write_private(
            files.credentials,
            f"LIVEKIT_URL={stack.ws_url}\nLIVEKIT_API_KEY={stack.api_key}\n"
            f"LIVEKIT_API_SECRET={stack.api_secret}\n",
        )
    else:
        stale = run_dir / "credentials.env"  # from an earlier loopback run of this directory
        stale.unlink(missing_ok=True)
    return files
