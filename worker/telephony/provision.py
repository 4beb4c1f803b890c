"""Idempotent provisioning of inbound SIP trunks and dispatch rules through ``livekit-api``.

Trunks and rules are matched with what LiveKit already has **by name**: missing ones are
created, changed ones are replaced in place (``UpdateSIPInboundTrunk``/``UpdateSIPDispatchRule``
with a full replacement, which keeps their IDs), identical ones are left untouched. Running
it twice changes nothing. Objects that exist in LiveKit but not in our config are reported,
never deleted: another tool may own them.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any, TypeVar

import aiohttp
from google.protobuf.duration_pb2 import Duration
from livekit import api

from worker.config.telephony import (
    DispatchRuleConfig,
    InboundTrunkConfig,
    OutboundTrunkConfig,
    SipEdgeConfig,
    TelephonyConfig,
    load_telephony,
)

if TYPE_CHECKING:
    from worker.stack.loopback import LoopbackStack

__all__ = [
    "NEXT_HOP_HEADER",
    "ProvisionError",
    "ProvisionResult",
    "desired_dispatch_rule",
    "desired_outbound_trunk",
    "desired_trunk",
    "provision",
    "provision_loopback",
]


class ProvisionError(RuntimeError):
    """LiveKit refused or could not be reached; the message says which object and why."""


@dataclass
class ProvisionResult:
    """What :func:`provision` did, by object name; IDs map names to LiveKit IDs."""

    created: list[str] = field(default_factory=list)
    updated: list[str] = field(default_factory=list)
    unchanged: list[str] = field(default_factory=list)
    unmanaged: list[str] = field(default_factory=list)
    trunk_ids: dict[str, str] = field(default_factory=dict)
    rule_ids: dict[str, str] = field(default_factory=dict)
    outbound_ids: dict[str, str] = field(default_factory=dict)

    @property
    def changed(self) -> bool:
        return bool(self.created or self.updated)

    def summary_lines(self) -> list[str]:
        lines = [
            f"{verb}: {', '.join(names)}"
            for verb, names in (
                ("created", self.created),
                ("updated", self.updated),
                ("unchanged", self.unchanged),
            )
            if names
        ]
        if self.unmanaged:
            lines.append(f"left alone (in LiveKit, not in our config): {', '.join(self.unmanaged)}")
        return lines or ["nothing to do"]


def _duration(seconds: float) -> Duration:
    whole = int(seconds)
    return Duration(seconds=whole, nanos=round((seconds - whole) * 1e9))


def desired_trunk(
    cfg: InboundTrunkConfig, edge: SipEdgeConfig | None = None
) -> api.SIPInboundTrunkInfo:
    """The LiveKit inbound trunk our config asks for (without ID). Behind an enabled SIP edge
    livekit-sip sees every call come from the edge (``edge.forwards_from``), and the trunk's own
    addresses are enforced by the edge on the real packet source."""
    addresses = [edge.forwards_from] if edge is not None and edge.enabled else cfg.allowed_addresses
    return api.SIPInboundTrunkInfo(
        name=cfg.name,
        numbers=list(cfg.numbers),
        allowed_addresses=list(addresses),
        allowed_numbers=list(cfg.allowed_numbers),
        auth_username=cfg.auth_username or "",
        auth_password=cfg.auth_password or "",
        ringing_timeout=_duration(cfg.ringing_timeout_s),
        max_call_duration=_duration(cfg.max_call_duration_s),
    )


NEXT_HOP_HEADER = "X-Voicestack-Next-Hop"
"""Carries an outbound call's real destination from livekit-sip to the SIP edge (sip-edge.cfg
takes it only from livekit-sip's address and removes it before sending on)."""


def desired_outbound_trunk(
    cfg: OutboundTrunkConfig, edge: tuple[str, int] | None = None
) -> api.SIPOutboundTrunkInfo:
    """The LiveKit outbound trunk our config asks for (without ID). With the SIP edge at
    ``edge`` (as livekit-sip reaches it), a trunk that can pass it (:meth:`edge_hop`) points at
    the edge, which sends the call on to the trunk's address and relays its media; others go
    straight to their address."""
    transport = {
        "udp": api.SIPTransport.SIP_TRANSPORT_UDP,
        "tcp": api.SIPTransport.SIP_TRANSPORT_TCP,
        "tls": api.SIPTransport.SIP_TRANSPORT_TLS,
    }[cfg.transport]
    address, headers = cfg.address, {}
    hop = cfg.edge_hop() if edge is not None else None
    if edge is not None and hop is not None:
        address, transport = f"{edge[0]}:{edge[1]}", api.SIPTransport.SIP_TRANSPORT_UDP
        headers = {NEXT_HOP_HEADER: hop}
    return api.SIPOutboundTrunkInfo(
        name=cfg.name,
        address=address,
        transport=transport,
        numbers=list(cfg.numbers),
        auth_username=cfg.auth_username or "",
        auth_password=cfg.auth_password or "",
        headers=headers,
    )


def desired_dispatch_rule(
    cfg: DispatchRuleConfig, trunk_ids: list[str], agent_name: str
) -> api.SIPDispatchRuleInfo:
    """The LiveKit dispatch rule our config asks for: one room per call, our agent in it."""
    if not trunk_ids:  # the config validators make this unreachable; never send such a rule
        raise ProvisionError(
            f"dispatch rule {cfg.name!r}: refusing to create a rule without trunks"
        )
    return api.SIPDispatchRuleInfo(
        name=cfg.name,
        trunk_ids=sorted(trunk_ids),
        rule=api.SIPDispatchRule(
            dispatch_rule_individual=api.SIPDispatchRuleIndividual(room_prefix=cfg.room_prefix)
        ),
        room_config=api.RoomConfiguration(agents=[api.RoomAgentDispatch(agent_name=agent_name)]),
    )


# The fields we manage; everything else (IDs, timestamps, server-side defaults) is ignored
# when deciding whether an existing object already matches.
_TRUNK_FIELDS = (
    "name",
    "numbers",
    "allowed_addresses",
    "allowed_numbers",
    "auth_username",
    "auth_password",
    "ringing_timeout",
    "max_call_duration",
)
_RULE_FIELDS = ("name", "trunk_ids", "rule", "room_config")
_OUT_FIELDS = (
    "name",
    "address",
    "transport",
    "numbers",
    "auth_username",
    "auth_password",
    "headers",
)

_Info = TypeVar("_Info", api.SIPInboundTrunkInfo, api.SIPDispatchRuleInfo, api.SIPOutboundTrunkInfo)


def _projection(msg: Any, fields: tuple[str, ...]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for name in fields:
        value = getattr(msg, name)
        if hasattr(value, "SerializeToString"):
            out[name] = value.SerializeToString(deterministic=True)
        elif hasattr(value, "items"):  # map fields
            out[name] = sorted(value.items())
        elif not isinstance(value, str | bytes | int | float | bool):
            out[name] = sorted(value)  # repeated scalar fields: order carries no meaning
        else:
            out[name] = value
    return out


def _by_name(items: Any, kind: str) -> dict[str, Any]:
    found: dict[str, Any] = {}
    for item in items:
        if item.name in found:
            raise ProvisionError(
                f"LiveKit holds two {kind}s named {item.name!r}; remove one by hand "
                "(provisioning matches by name)"
            )
        found[item.name] = item
    return found


async def _reconcile(
    label: str,
    want: _Info,
    have: _Info | None,
    fields: tuple[str, ...],
    *,
    ident: Callable[[_Info], str],
    create: Callable[[_Info], Awaitable[_Info]],
    update: Callable[[str, _Info], Awaitable[_Info]],
    result: ProvisionResult,
) -> str:
    """Make one LiveKit object match ``want`` (create, replace in place, or leave it); its ID.

    ``have`` is the object of the same name LiveKit holds, if any; only ``fields`` count when
    deciding whether it already matches. ``label`` goes into ``result``'s lists.
    """
    if have is None:
        made = await create(want)
        result.created.append(label)
        return ident(made)
    if _projection(have, fields) != _projection(want, fields):
        await update(ident(have), want)
        result.updated.append(label)
    else:
        result.unchanged.append(label)
    return ident(have)


async def _reconcile_all(
    kind: str,
    have: Any,
    wanted: list[tuple[str, _Info]],
    fields: tuple[str, ...],
    *,
    ident: Callable[[_Info], str],
    create: Callable[[_Info], Awaitable[_Info]],
    update: Callable[[str, _Info], Awaitable[_Info]],
    result: ProvisionResult,
) -> dict[str, str]:
    """Reconcile every wanted object of one kind with ``have`` (LiveKit's list of that kind);
    returns name -> ID and reports LiveKit's other objects of the kind as unmanaged."""
    existing = _by_name(have, kind)
    ids = {
        name: await _reconcile(
            f"{kind} {name}",
            want,
            existing.get(name),
            fields,
            ident=ident,
            create=create,
            update=update,
            result=result,
        )
        for name, want in wanted
    }
    result.unmanaged += [f"{kind} {n}" for n in sorted(existing) if n not in ids]
    return ids


async def _apply(
    lk: api.LiveKitAPI,
    cfg: TelephonyConfig,
    result: ProvisionResult,
    edge: tuple[str, int] | None,
) -> None:
    result.trunk_ids = await _reconcile_all(
        "trunk",
        (await lk.sip.list_inbound_trunk(api.ListSIPInboundTrunkRequest())).items,
        [(t.name, desired_trunk(t, cfg.sip_edge)) for t in cfg.trunks],
        _TRUNK_FIELDS,
        ident=lambda trunk: trunk.sip_trunk_id,
        create=lambda want: lk.sip.create_inbound_trunk(
            api.CreateSIPInboundTrunkRequest(trunk=want)
        ),
        update=lk.sip.update_inbound_trunk,
        result=result,
    )
    result.rule_ids = await _reconcile_all(
        "dispatch rule",
        (await lk.sip.list_dispatch_rule(api.ListSIPDispatchRuleRequest())).items,
        [
            (
                r.name,
                desired_dispatch_rule(r, [result.trunk_ids[t] for t in r.trunks], cfg.agent_name),
            )
            for r in cfg.dispatch_rules
        ],
        _RULE_FIELDS,
        ident=lambda rule: rule.sip_dispatch_rule_id,
        create=lambda want: lk.sip.create_dispatch_rule(
            api.CreateSIPDispatchRuleRequest(dispatch_rule=want)
        ),
        update=lk.sip.update_dispatch_rule,
        result=result,
    )
    result.outbound_ids = await _reconcile_all(
        "outbound trunk",
        (await lk.sip.list_outbound_trunk(api.ListSIPOutboundTrunkRequest())).items,
        [(t.name, desired_outbound_trunk(t, edge)) for t in cfg.outbound_trunks],
        _OUT_FIELDS,
        ident=lambda trunk: trunk.sip_trunk_id,
        create=lambda want: lk.sip.create_outbound_trunk(
            api.CreateSIPOutboundTrunkRequest(trunk=want)
        ),
        update=lk.sip.update_outbound_trunk,
        result=result,
    )


async def provision(
    cfg: TelephonyConfig,
    url: str,
    api_key: str,
    api_secret: str,
    timeout_s: float = 10.0,
    *,
    edge: tuple[str, int] | None = None,
) -> ProvisionResult:
    """Make LiveKit's trunks and dispatch rules match ``cfg``; return what changed. ``edge``:
    where livekit-sip reaches the SIP edge when it runs (``RenderedStack.sip_edge_target``),
    so outbound calls pass it too.

    Raises :class:`ProvisionError` when LiveKit is unreachable or refuses a request (e.g.
    "sip not connected (redis required)" when the server runs without redis).
    """
    result = ProvisionResult()
    # failover=False: never let the client look for LiveKit Cloud regions.
    lk = api.LiveKitAPI(
        url, api_key, api_secret, timeout=aiohttp.ClientTimeout(total=timeout_s), failover=False
    )
    try:
        await _apply(lk, cfg, result, edge if cfg.sip_edge.enabled else None)
    except api.TwirpError as err:
        raise ProvisionError(
            f"LiveKit at {url} refused the request: {err.code}: {err.message}"
        ) from None
    except (aiohttp.ClientError, TimeoutError) as err:
        raise ProvisionError(
            f"cannot reach LiveKit at {url}: {err or type(err).__name__}"
        ) from None
    finally:
        await lk.aclose()
    return result


def provision_loopback(stack: LoopbackStack) -> tuple[TelephonyConfig, ProvisionResult]:
    """Provision the shipped ``config/telephony.yaml`` as ``stack`` renders it (the demo, the
    load test and the tests); returns the config (its trunk number is what to dial)."""
    cfg = load_telephony(stack.rendered.telephony_path, stack.rendered.env)
    edge = stack.rendered.sip_edge_target if "sip-edge" in stack.components else None
    return cfg, asyncio.run(
        provision(cfg, stack.livekit_url, stack.api_key, stack.api_secret, edge=edge)
    )
