"""``voicestack check-config``: every rule LiveKit does not enforce itself, in one place.

Each ``check_*`` function takes already-rendered config (see :mod:`worker.stack.render`) and
returns a list of problems as sentences an operator can act on; an empty list means the config
passes. :func:`check_stack` runs them all for a profile and also loads the telephony config,
whose own validators (:mod:`worker.config.telephony`) enforce the trunk/dispatch rules.
"""

from __future__ import annotations

import ipaddress
import os
import re
import subprocess
import tempfile
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import yaml

from worker.config.agent import AgentConfig, load_agent_config, load_call_flows
from worker.config.inference import InferenceConfig
from worker.config.loader import ConfigError, load_model
from worker.config.stack import Profile
from worker.config.telephony import TelephonyConfig, load_telephony
from worker.stack.plan import tool_path
from worker.stack.render import (
    LIVEKIT_CONFIG,
    SIP_CONFIG,
    TELEPHONY_CONFIG,
    RenderedStack,
    render_stack,
)
from worker.telephony.sip_keys import unknown_keys

__all__ = [
    "CheckReport",
    "check_api_keys",
    "check_livekit_server",
    "check_livekit_strict",
    "check_sip",
    "check_stack",
]

MIN_SECRET_LENGTH = 32
DEV_KEY = "devkey"


def _ip(value: Any) -> ipaddress.IPv4Address | ipaddress.IPv6Address | None:
    try:
        return ipaddress.ip_address(str(value).strip().strip("[]"))
    except ValueError:
        return None


def _host(hostport: str) -> str:
    """The host of ``host``, ``host:port``, ``[v6]:port`` or a bare IPv6 address."""
    if hostport.startswith("[") and "]" in hostport:
        return hostport[1 : hostport.index("]")]
    return hostport.rsplit(":", 1)[0] if hostport.count(":") == 1 else hostport


def _local_endpoint_problem(what: str, hostport: str) -> str | None:
    """None if ``hostport`` names a non-public IP; else why it could reach the internet."""
    ip = _ip(_host(hostport))
    if ip is None:
        return (
            f"{what} {hostport!r} is a hostname: use an IP inside your network "
            "(a name can resolve to a public server, and resolving it needs DNS)"
        )
    if ip.is_global:
        return f"{what} {hostport!r} is a public address: the stack must not reach the internet"
    return None


def _public_ip_problems(src: str, what: str, value: Any) -> list[str]:
    """A public IP for something that must be local (a hostname such as a compose service
    name is allowed here: it is how containers find redis or livekit-server)."""
    if not value:
        return []
    text = str(value)
    ip = _ip(_host(text))
    if ip is not None and ip.is_global:
        return [
            f"{src}: {what} {text!r} is a public address: the stack must not reach the internet"
        ]
    return []


def check_api_keys(keys: Mapping[str, str], profile: Profile, source: str) -> list[str]:
    """API secrets of at least 32 characters, and no ``devkey`` outside the dev profile."""
    problems: list[str] = []
    if not keys:
        problems.append(f"{source}: no API key configured (LIVEKIT_API_KEY/LIVEKIT_API_SECRET)")
    if profile is Profile.DEV:
        return problems
    for key, secret in keys.items():
        if key == DEV_KEY:
            problems.append(
                f"{source}: API key {DEV_KEY!r} is LiveKit's public development key; it is only "
                "accepted with --profile dev"
            )
        if len(secret) < MIN_SECRET_LENGTH:
            problems.append(
                f"{source}: the secret of API key {key!r} has {len(secret)} characters; at least "
                f"{MIN_SECRET_LENGTH} are required (livekit-server only logs this, we refuse)"
            )
    return problems


def _redis_problems(src: str, redis: Any) -> list[str]:
    """Redis off loopback must have a password: it holds call state and dispatch."""
    redis = redis if isinstance(redis, Mapping) else {}
    address = str(redis.get("address") or "")
    if not address:
        return []
    host = _host(address)
    ip = _ip(host)
    if host == "localhost" or (ip is not None and ip.is_loopback):
        return []
    if redis.get("password"):
        return []
    return [
        f"{src}: redis.address {address} is not loopback and redis.password is empty: anyone "
        "who reaches it can read call state and forge dispatches (set REDIS_PASSWORD)"
    ]


def _port_problems(
    src: str, conf: Mapping[str, Any], keys: tuple[str, ...], off_ok: tuple[str, ...] = ()
) -> list[str]:
    """Each of ``keys`` (dotted) that is set must be a port number 1-65535 (or 0 for the
    ``off_ok`` keys, where 0 turns the listener off)."""
    problems: list[str] = []
    for key in keys:
        node: Any = conf
        for part in key.split("."):
            node = node.get(part) if isinstance(node, Mapping) else None
        if node is None:
            continue
        if node == 0 and key in off_ok:
            continue
        if isinstance(node, bool) or not isinstance(node, int) or not 1 <= node <= 65535:
            problems.append(f"{src}: {key} {node!r} is not a port number (1-65535)")
    return problems


def check_voice_configs(
    root: Path, telephony: TelephonyConfig | None, agent_path: Path | None = None
) -> list[str]:
    """``config/agent.yaml`` and ``config/inference.yaml`` load, and agree with each other and
    with the telephony config (a mismatch fails every call, not the start)."""
    problems: list[str] = []
    agent_path = agent_path or root / "config" / "agent.yaml"
    inference_path = root / "config" / "inference.yaml"
    agent = inference = None
    try:
        agent = load_agent_config(agent_path)
    except ConfigError as err:
        problems.append(str(err))
    try:
        inference = load_model(inference_path, InferenceConfig)
    except ConfigError as err:
        problems.append(str(err))
    if agent is not None and telephony is not None:
        if agent.worker.agent_name != telephony.agent_name:
            problems.append(
                f"{agent_path}: worker.agent_name {agent.worker.agent_name!r} differs from "
                f"{TELEPHONY_CONFIG}'s agent_name {telephony.agent_name!r}: no call would "
                "reach an agent"
            )
    if agent is not None:
        problems += _check_flows(agent, agent_path, telephony)
    if agent is not None and inference is not None:
        if agent.llm.max_tokens > inference.llm.max_tokens:
            problems.append(
                f"{agent_path}: llm.max_tokens {agent.llm.max_tokens} is above the inference "
                f"server's cap llm.max_tokens {inference.llm.max_tokens} ({inference_path}): "
                "every LLM request would be refused"
            )
    return problems


def check_secrets_from_env(path: Path) -> list[str]:
    """Outbound trunk passwords in the telephony file must be ``${VAR}`` placeholders: a
    literal one (it places calls that cost money) would sit in version control and in every
    copy of the config."""
    try:
        raw = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    except (OSError, yaml.YAMLError):
        return []  # load_telephony reports it
    if not isinstance(raw, dict):
        return []
    problems: list[str] = []
    for trunk in raw.get("outbound_trunks") or []:
        if not isinstance(trunk, dict):
            continue
        secret = trunk.get("auth_password")
        if isinstance(secret, str | int) and str(secret) and not str(secret).startswith("${"):
            problems.append(
                f"{path.name}: outbound_trunks {trunk.get('name')!r}: auth_password is written "
                "in the file; give it as ${VAR} from the environment"
            )
    return problems


def _check_flows(
    agent: AgentConfig, agent_path: Path, telephony: TelephonyConfig | None
) -> list[str]:
    """The flows file loads, and every trunk number has a line (and every line a trunk)."""
    try:
        flows = load_call_flows(agent, agent_path)
    except ConfigError as err:
        return [str(err)]
    if telephony is None:
        return []
    problems: list[str] = []
    trunk_numbers = {n for trunk in telephony.trunks for n in trunk.numbers}
    has_default = any(f.default for f in flows.flows)
    for number in sorted(trunk_numbers):
        if flows.for_number(number) is None and not has_default:
            problems.append(
                f"{TELEPHONY_CONFIG}: calls to {number} match no flow and there is no default "
                "flow: they would be hung up"
            )
    for flow in flows.flows:
        for number in flow.numbers:
            if number not in trunk_numbers:
                problems.append(
                    f"flow {flow.name!r} answers {number}, which no trunk of "
                    f"{TELEPHONY_CONFIG} receives"
                )
    return problems


def check_livekit_server(conf: Mapping[str, Any]) -> list[str]:
    """Production shape of livekit-server's config: no dev mode, zero outbound connections."""
    src = LIVEKIT_CONFIG
    problems: list[str] = []
    if conf.get("development"):
        problems.append(
            f"{src}: development: true enables the public devkey/secret pair and debug "
            "endpoints; never ship it"
        )
    if not conf.get("bind_addresses"):
        problems.append(f"{src}: bind_addresses is empty: name the address(es) to listen on")
    rtc = conf.get("rtc") or {}
    if rtc.get("use_external_ip"):
        problems.append(
            f"{src}: rtc.use_external_ip: true makes livekit-server ask public STUN servers for "
            "its address; set it to false and give rtc.node_ip"
        )
    node_ip = rtc.get("node_ip")
    if not node_ip:
        problems.append(
            f"{src}: rtc.node_ip is not set: livekit-server would discover it through public "
            "STUN servers"
        )
    elif any(_ip(part) is None for part in str(node_ip).split(",")):
        problems.append(f"{src}: rtc.node_ip {node_ip!r} is not an IP address")
    stun = rtc.get("stun_servers") or []
    if not stun:
        problems.append(
            f"{src}: rtc.stun_servers is empty: livekit-server then tells every client to use "
            "Google's and Twilio's public STUN servers; list a STUN server inside your network"
        )
    for entry in stun:
        problem = _local_endpoint_problem("rtc.stun_servers entry", str(entry))
        if problem:
            problems.append(f"{src}: {problem}")
    for turn in rtc.get("turn_servers") or []:
        problem = _local_endpoint_problem("rtc.turn_servers host", str(turn.get("host", "")))
        if problem:
            problems.append(f"{src}: {problem}")
    for url in (conf.get("webhook") or {}).get("urls") or []:
        problem = _local_endpoint_problem("webhook url host", urlsplit(str(url)).hostname or "")
        if problem:
            problems.append(f"{src}: {problem}")
    jaeger = (conf.get("trace") or {}).get("jaeger_url")
    if jaeger:
        problem = _local_endpoint_problem(
            "trace.jaeger_url host", urlsplit(str(jaeger)).hostname or ""
        )
        if problem:
            problems.append(f"{src}: {problem}")
    problems += _public_ip_problems(src, "redis.address", (conf.get("redis") or {}).get("address"))
    problems += _redis_problems(src, conf.get("redis"))
    problems += _port_problems(
        src,
        conf,
        ("port", "rtc.tcp_port", "rtc.udp_port", "rtc.port_range_start", "rtc.port_range_end"),
        off_ok=("rtc.tcp_port",),
    )
    if not (conf.get("redis") or {}).get("address"):
        problems.append(f"{src}: redis.address is not set: livekit-sip needs redis")
    if conf.get("keys"):
        problems.append(
            f"{src}: keys belong in the environment (LIVEKIT_API_KEY/LIVEKIT_API_SECRET), not "
            "in the config file"
        )
    return problems


def check_sip(conf: Mapping[str, Any]) -> list[str]:
    """livekit-sip's config: only keys it knows, and nothing that reaches the internet."""
    src = SIP_CONFIG
    problems = [
        f"{src}: unknown key {path!r}: livekit-sip would silently ignore it "
        "(logging is `logging: {level: ...}`)"
        for path in unknown_keys(conf)
    ]
    for key in ("use_external_ip", "media_use_external_ip"):
        if conf.get(key):
            problems.append(
                f"{src}: {key}: true makes livekit-sip ask public STUN servers for its address; "
                "set nat_1_to_1_ip instead"
            )
    nat = conf.get("nat_1_to_1_ip")
    if not nat:
        problems.append(
            f"{src}: nat_1_to_1_ip is not set: the address announced in SIP/SDP would be guessed "
            "from the first network interface"
        )
    elif _ip(nat) is None:
        problems.append(f"{src}: nat_1_to_1_ip {nat!r} is not an IP address")
    if conf.get("media_nat_1_to_1_ip") and _ip(conf["media_nat_1_to_1_ip"]) is None:
        problems.append(f"{src}: media_nat_1_to_1_ip is not an IP address")
    rtp = conf.get("rtp_port")
    if rtp is not None and not re.fullmatch(r"\d+(\s*-\s*\d+)?", str(rtp)):
        # livekit-sip reads only a scalar here; a mapping like {start:, end:} is silently
        # ignored and the default 10000-20000 range used.
        problems.append(f"{src}: rtp_port {rtp!r} must be a port or a range like 10000-20000")
    if not (conf.get("redis") or {}).get("address"):
        problems.append(f"{src}: redis.address is required (livekit-sip refuses to start)")
    if not conf.get("ws_url"):
        problems.append(f"{src}: ws_url is required (the LiveKit server to join rooms on)")
    else:
        problems += _public_ip_problems(src, "ws_url", urlsplit(str(conf["ws_url"])).hostname)
    problems += _public_ip_problems(src, "redis.address", (conf.get("redis") or {}).get("address"))
    problems += _redis_problems(src, conf.get("redis"))
    problems += _port_problems(
        src, conf, ("sip_port", "sip_port_listen", "health_port", "prometheus_port")
    )
    if conf.get("jaeger_url"):
        problem = _local_endpoint_problem(
            "jaeger_url host", urlsplit(str(conf["jaeger_url"])).hostname or ""
        )
        if problem:
            problems.append(f"{src}: {problem}")
    return problems


def check_livekit_strict(stack: RenderedStack, binary: Path) -> list[str]:
    """Let livekit-server's own strict parser read the rendered config (``ports`` command).

    It rejects unknown keys and invalid RTC settings without starting anything or connecting
    anywhere; our own rules above cannot know every key of its large schema.
    """
    with tempfile.TemporaryDirectory(prefix="voicestack-check-") as tmp:
        path = Path(tmp) / LIVEKIT_CONFIG
        fd = os.open(path, os.O_WRONLY | os.O_CREAT, 0o600)
        with os.fdopen(fd, "w", encoding="utf-8") as fh:
            fh.write(yaml.safe_dump(stack.livekit, sort_keys=False))
        env = {"PATH": os.environ.get("PATH", ""), "LIVEKIT_KEYS": f"{stack.api_key}: x"}
        try:
            done = subprocess.run(
                [str(binary), "--config", str(path), "ports"],
                capture_output=True,
                text=True,
                timeout=20,
                env=env,
                check=False,
            )
        except (OSError, subprocess.TimeoutExpired) as err:
            return [f"{LIVEKIT_CONFIG}: could not run {binary} to check it: {err}"]
    # livekit-server exits 0 even when it refuses its config (it only prints the error), so
    # success is recognised by the port listing the command prints.
    if done.returncode == 0 and "TCP Ports" in done.stdout:
        return []
    output = (done.stderr.strip() or done.stdout.strip()).splitlines()
    why = " ".join(line.strip() for line in output[-3:]) or f"exit code {done.returncode}"
    return [f"{LIVEKIT_CONFIG}: livekit-server rejects it: {why}"]


@dataclass
class CheckReport:
    """Outcome of :func:`check_stack`: problems found and, if it loaded, the telephony config."""

    problems: list[str] = field(default_factory=list)
    stack: RenderedStack | None = None
    telephony: TelephonyConfig | None = None
    notes: list[str] = field(default_factory=list)  # checks that could not run, and why

    @property
    def ok(self) -> bool:
        return not self.problems


def check_stack(
    profile: Profile | str,
    env: Mapping[str, str],
    root: Path | None = None,
    telephony_path: Path | None = None,
    livekit_binary: Path | None = None,
    agent_path: Path | None = None,
) -> CheckReport:
    """Render and check every config for ``profile``; collect all problems (never stop at one).

    When the livekit-server binary exists (default: ``.tools/bin/livekit-server``) its strict
    parser checks the rendered config too; otherwise a note says that check did not run.
    """
    profile = Profile(profile)
    report = CheckReport()
    try:
        stack = render_stack(profile, env, root)
    except ConfigError as err:
        report.problems.append(str(err))
        return report
    report.stack = stack
    report.problems += check_livekit_server(stack.livekit)
    binary = livekit_binary or tool_path("livekit-server")
    if binary.is_file() and os.access(binary, os.X_OK):
        report.problems += check_livekit_strict(stack, binary)
    else:
        report.notes.append(
            f"livekit-server's own strict check of {LIVEKIT_CONFIG} did not run: {binary} "
            "not found (scripts/setup.sh builds it)"
        )
    report.problems += check_sip(stack.sip)
    keys = {stack.api_key: stack.api_secret}
    report.problems += check_api_keys(keys, profile, "LIVEKIT_API_KEY/LIVEKIT_API_SECRET")
    for field_name in ("api_key", "api_secret"):
        if stack.sip.get(field_name):
            report.problems.append(
                f"{SIP_CONFIG}: {field_name} belongs in the environment (LIVEKIT_API_KEY/"
                "LIVEKIT_API_SECRET), not in the config file"
            )
    path = telephony_path or (stack.root / TELEPHONY_CONFIG)
    try:
        report.telephony = load_telephony(path, stack.env)
    except ConfigError as err:
        report.problems.append(str(err))
    report.problems += check_secrets_from_env(path)
    report.problems += check_voice_configs(stack.root, report.telephony, agent_path)
    return report
