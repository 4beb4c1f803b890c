"""Typed telephony config: inbound trunks, dispatch rules and the agent they dispatch.

``config/telephony.yaml`` is loaded once (placeholders filled from the environment, see
:mod:`worker.config.stack`) and validated here; ``voicestack provision`` turns it into LiveKit
SIP trunks and dispatch rules. The safety rules that LiveKit does not enforce itself are
validators of these models, so a config that would let anyone call in cannot even be loaded.
"""

from __future__ import annotations

import ipaddress
import re
from collections.abc import Mapping
from pathlib import Path
from typing import Annotated, Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from worker.config.loader import ConfigError, parse_model
from worker.config.stack import substitute_tree

__all__ = [
    "DispatchRuleConfig",
    "InboundTrunkConfig",
    "OutboundTrunkConfig",
    "TelephonyConfig",
    "check_number",
    "load_telephony",
]

_Name = Annotated[str, Field(min_length=1, max_length=128, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")]


class _Strict(BaseModel):
    # Unknown keys are errors; numeric-looking values (a PIN-like password) stay strings.
    model_config = ConfigDict(extra="forbid", frozen=True, coerce_numbers_to_str=True)


def _check_address(value: str) -> str:
    """An IP address or CIDR network, always written as a network (``203.0.113.5/32``);
    anything else (a hostname) is refused. LiveKit matches an entry against the packet source
    *or*, by plain string equality, against the caller-controlled From host: a bare address
    would let anyone who writes it in From match the trunk; a CIDR string never equals a host."""
    text = value.strip()
    try:
        if "/" in text:
            return str(ipaddress.ip_network(text, strict=False))
        ip = ipaddress.ip_address(text)
        return f"{ip}/{ip.max_prefixlen}"
    except ValueError:
        raise ValueError(
            f"{value!r} is not an IP address or CIDR network; hostnames are not allowed in "
            "allowed_addresses because LiveKit compares them with the caller-controlled From host"
        ) from None


_NUMBER = re.compile(r"^\+?[0-9]{3,15}$")
MIN_PASSWORD_CHARS = 12
"""Digest auth is tried online at SIP speed: a short password falls to a dictionary."""


def check_number(value: str) -> str:
    """``value`` stripped, or ``ValueError`` if it is not a phone number (3-15 digits, +)."""
    text = value.strip()
    if not _NUMBER.match(text):
        raise ValueError(
            f"{value!r} is not a phone number (3-15 digits, optionally with a leading +)"
        )
    return text


def _admission_problem(
    trunk: str, network: ipaddress.IPv4Network | ipaddress.IPv6Network, has_auth: bool
) -> str | None:
    """Why an allowlist entry lets too many callers in, or None."""
    if network.prefixlen == 0:
        return f"trunk {trunk!r}: allowed_addresses {network} admits every address"
    if network.is_private or network.is_loopback or network.is_link_local:
        return None
    wide = 24 if network.version == 4 else 48
    if network.prefixlen < wide:
        return (
            f"trunk {trunk!r}: allowed_addresses {network} admits a whole public network "
            f"(wider than /{wide}); name the PBX/SBC addresses"
        )
    if not has_auth:
        return (
            f"trunk {trunk!r}: allowed_addresses {network} is public and the trunk has no digest "
            "auth: a UDP source address can be spoofed; add auth_username/auth_password"
        )
    return None


class InboundTrunkConfig(_Strict):
    """One inbound SIP trunk (a PBX/SBC that may send us calls)."""

    name: _Name
    numbers: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    allowed_addresses: list[str] = Field(default_factory=list)
    allowed_numbers: list[Annotated[str, Field(min_length=1)]] = Field(default_factory=list)
    auth_username: str | None = None
    auth_password: str | None = None
    ringing_timeout_s: float = Field(default=15.0, gt=0, le=300)
    max_call_duration_s: float = Field(default=3600.0, gt=0, le=86400)

    @field_validator("numbers", "allowed_numbers")
    @classmethod
    def _numbers_are_numbers(cls, values: list[str]) -> list[str]:
        return [check_number(v) for v in values]

    @field_validator("allowed_addresses")
    @classmethod
    def _addresses_are_ips(cls, values: list[str]) -> list[str]:
        return [_check_address(v) for v in values]

    @model_validator(mode="after")
    def _has_admission(self) -> InboundTrunkConfig:
        has_user, has_password = bool(self.auth_username), bool(self.auth_password)
        if has_user != has_password:
            raise ValueError(
                f"trunk {self.name!r}: digest auth needs both auth_username and auth_password"
            )
        if not self.allowed_addresses and not has_user:
            raise ValueError(
                f"trunk {self.name!r} has neither allowed_addresses nor digest auth "
                "(auth_username/auth_password): anyone on the network could call in"
            )
        if self.auth_password and len(self.auth_password) < MIN_PASSWORD_CHARS:
            raise ValueError(
                f"trunk {self.name!r}: auth_password has {len(self.auth_password)} characters; "
                f"digest auth needs at least {MIN_PASSWORD_CHARS}"
            )
        for entry in self.allowed_addresses:
            problem = _admission_problem(
                self.name, ipaddress.ip_network(entry, strict=False), has_user
            )
            if problem:
                raise ValueError(problem)
        return self


class DispatchRuleConfig(_Strict):
    """One dispatch rule: calls on ``trunks`` go to a new room per call with our agent."""

    name: _Name
    trunks: list[_Name] = Field(
        default_factory=list,
        description="names of the trunks this rule applies to (LiveKit trunk_ids)",
    )
    room_prefix: Annotated[str, Field(min_length=1, max_length=64)] = "call-"

    @model_validator(mode="after")
    def _names_trunks(self) -> DispatchRuleConfig:
        if not self.trunks:
            raise ValueError(
                f"dispatch rule {self.name!r} has no trunks (trunk_ids): LiveKit applies a rule "
                "without trunk_ids to calls that matched no trunk at all, i.e. to anyone"
            )
        return self


_HOST_PORT = re.compile(r"^[A-Za-z0-9.-]+(:[0-9]{1,5})?$")
_PREFIX = re.compile(r"^\+?[0-9]{1,15}$")


class OutboundTrunkConfig(_Strict):
    """One outbound SIP trunk: where ``voicestack call`` sends its INVITEs (the PBX/SBC)."""

    name: _Name
    address: Annotated[str, Field(min_length=1, max_length=255)]
    """host[:port] of the PBX/SBC that places the calls (no sip: prefix)."""
    transport: Literal["udp", "tcp", "tls"] = "udp"
    numbers: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    """Caller IDs this trunk may present (the first is the default)."""
    destinations: list[Annotated[str, Field(min_length=1)]] = Field(min_length=1)
    """Number prefixes it may dial (``+1555``, ``0049``): never every number."""
    auth_username: str | None = None
    auth_password: str | None = None
    ringing_timeout_s: float = Field(default=30.0, gt=0, le=300)
    max_call_duration_s: float = Field(default=3600.0, gt=0, le=86400)

    @field_validator("numbers")
    @classmethod
    def _numbers_are_numbers(cls, values: list[str]) -> list[str]:
        return [check_number(v) for v in values]

    @field_validator("address")
    @classmethod
    def _host_port(cls, value: str) -> str:
        if not _HOST_PORT.match(value):
            raise ValueError(f"{value!r} is not host[:port] (no scheme, user or parameters)")
        return value

    @field_validator("destinations")
    @classmethod
    def _prefixes(cls, values: list[str]) -> list[str]:
        for v in values:
            if not _PREFIX.match(v):
                raise ValueError(
                    f"destination {v!r} is not a number prefix (digits with an optional +); "
                    "an empty or bare '+' prefix would let the trunk dial anywhere"
                )
        return values

    def edge_hop(self) -> str | None:
        """Where the SIP edge sends this trunk's calls on to (``host:port``, ``;transport=tcp``
        for TCP), or None when they cannot pass the edge and go straight from livekit-sip: TLS
        (the edge speaks none) and host names (the edge resolves no names and admits peers by
        address)."""
        host, _, port = self.address.partition(":")
        if self.transport == "tls":
            return None
        try:
            ipaddress.IPv4Address(host)
        except ValueError:
            return None
        return f"{host}:{port or 5060}" + (";transport=tcp" if self.transport == "tcp" else "")

    @model_validator(mode="after")
    def _auth_pair(self) -> OutboundTrunkConfig:
        if bool(self.auth_username) != bool(self.auth_password):
            raise ValueError(
                f"outbound trunk {self.name!r}: digest auth needs both auth_username and "
                "auth_password"
            )
        return self

    def allows(self, number: str) -> bool:
        """Whether ``number`` is inside this trunk's destinations."""
        return any(number.startswith(p) for p in self.destinations)


class SipEdgeConfig(_Strict):
    """The SIP edge (Kamailio, ``sip-edge.cfg``) in front of livekit-sip: it drops requests from
    sources no trunk allows before parsing them, rate-limits each source and drops oversize
    datagrams, so a flood costs livekit-sip and LiveKit nothing (docs/security.md)."""

    enabled: bool = True
    max_requests_per_source: int = Field(
        30,
        ge=5,
        le=100_000,
        description="new requests one source address may send per window_s before it is blocked",
    )
    window_s: int = Field(2, ge=1, le=60)
    max_message_bytes: int = Field(8192, ge=2048, le=65_535)
    media_relay: Literal["strict", "learn", "off"] = Field(
        "strict",
        description=(
            "inbound calls' RTP through rtpengine, which drops packets from any source but each "
            "side's: 'strict' pins the address:port each side announced in its SDP, from the "
            "first packet (the PBX must send from what it announces: no NAT in between); 'learn' "
            "pins the first source heard in the few seconds after each offer/answer (a PBX "
            "behind NAT; a spoofer racing the PBX in that window can win); 'off' sends RTP "
            "straight to livekit-sip, which plays whatever reaches its ports"
        ),
    )
    forwards_from: str = Field(
        "127.0.0.1/32",
        description=(
            "the address livekit-sip sees the edge's requests come from (the edge runs on the "
            "same host and forwards over loopback): inbound trunks are provisioned with it, "
            "while the trunks' own allowed_addresses are what the edge admits"
        ),
    )

    @field_validator("forwards_from")
    @classmethod
    def _network(cls, value: str) -> str:
        try:
            ipaddress.ip_network(value, strict=False)
        except ValueError:
            raise ValueError(
                f"sip_edge.forwards_from: {value!r} is not an IP address or CIDR"
            ) from None
        return value


class TelephonyConfig(_Strict):
    """The whole telephony config file."""

    agent_name: _Name
    trunks: list[InboundTrunkConfig] = Field(min_length=1)
    dispatch_rules: list[DispatchRuleConfig] = Field(min_length=1)
    outbound_trunks: list[OutboundTrunkConfig] = Field(default_factory=list)
    sip_edge: SipEdgeConfig = Field(default_factory=SipEdgeConfig)

    def edge_allowed_sources(self) -> list[str]:
        """What the edge admits: every inbound trunk's allowed_addresses; a trunk without any
        (digest auth only) admits every address, rate-limited."""
        if any(not t.allowed_addresses for t in self.trunks):
            return ["0.0.0.0/0", "::/0"]
        return sorted({a for t in self.trunks for a in t.allowed_addresses})

    def edge_outbound_peers(self) -> list[str]:
        """The outbound trunks' addresses whose calls pass the edge (see
        :meth:`OutboundTrunkConfig.edge_hop`): the edge takes their replies and in-dialog
        requests, never a new call from them unless an inbound trunk allows it too."""
        return sorted(
            {f"{t.address.partition(':')[0]}/32" for t in self.outbound_trunks if t.edge_hop()}
        )

    @model_validator(mode="after")
    def _consistent(self) -> TelephonyConfig:
        trunk_names = [t.name for t in self.trunks]
        for kind, names in (
            ("trunk", trunk_names),
            ("dispatch rule", [r.name for r in self.dispatch_rules]),
            ("outbound trunk", [t.name for t in self.outbound_trunks]),
        ):
            dupes = sorted({n for n in names if names.count(n) > 1})
            if dupes:
                raise ValueError(
                    f"duplicate {kind} name(s): {', '.join(dupes)} (names must be unique)"
                )
        for rule in self.dispatch_rules:
            unknown = [t for t in rule.trunks if t not in trunk_names]
            if unknown:
                raise ValueError(
                    f"dispatch rule {rule.name!r} names unknown trunk(s) {', '.join(unknown)}; "
                    f"known trunks: {', '.join(trunk_names)}"
                )
        return self


def load_telephony(path: str | Path, env: Mapping[str, str]) -> TelephonyConfig:
    """Read ``path``, fill its ``${VAR}`` placeholders from ``env`` and validate it."""
    path = Path(path)
    try:
        data: Any = yaml.safe_load(path.read_text(encoding="utf-8"))
    except FileNotFoundError:
        raise ConfigError(f"{path}: configuration file not found") from None
    except OSError as err:
        raise ConfigError(f"{path}: cannot read: {err.strerror}") from None
    except yaml.YAMLError as err:
        raise ConfigError(f"{path}: not valid YAML: {err}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"{path}: expected a mapping at the top level")
    return parse_model(substitute_tree(data, env, str(path)), TelephonyConfig, str(path))
