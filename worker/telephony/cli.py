"""``voicestack check-config``, ``provision``, ``call`` and ``call-api``."""

from __future__ import annotations

import argparse
import asyncio
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from worker.config.loader import ConfigError
from worker.config.stack import Profile, merged_env
from worker.config.telephony import TelephonyConfig
from worker.telephony.checks import CheckReport, check_stack

__all__ = ["add_common_arguments", "register", "run_checks"]


def add_common_arguments(parser: argparse.ArgumentParser) -> None:
    """``--profile``, ``--env-file`` and ``--root``, shared by the stack commands."""
    parser.add_argument(
        "--profile",
        choices=[p.value for p in Profile],
        default=Profile.PROD.value,
        help="prod (default): values from the environment; dev: devkey tolerated; "
        "loopback: 127.0.0.1 and free ports",
    )
    parser.add_argument(
        "--env-file",
        type=Path,
        default=None,
        help="KEY=value file with the configs' ${VAR} values (the environment overrides it)",
    )
    parser.add_argument(
        "--root",
        type=Path,
        default=None,
        help="directory holding livekit-server.yaml, sip-config.yaml and config/ "
        "(default: the checkout)",
    )


def run_checks(args: argparse.Namespace) -> CheckReport:
    """Load the env file and run every check; a broken env file is reported as a problem."""
    try:
        env = merged_env(args.env_file)
    except ConfigError as err:
        return CheckReport(problems=[str(err)])
    telephony = getattr(args, "telephony", None)
    return check_stack(args.profile, env, args.root, telephony)


def _print_problems(report: CheckReport) -> None:
    print(f"check-config: {len(report.problems)} problem(s):", file=sys.stderr)
    for problem in report.problems:
        print(f"  - {problem}", file=sys.stderr)


def _check_config(args: argparse.Namespace) -> int:
    report = run_checks(args)
    if not report.ok:
        _print_problems(report)
        return 2
    assert report.stack is not None and report.telephony is not None
    for note in report.notes:
        print(f"check-config: note: {note}")
    tel = report.telephony
    print(
        f"check-config: OK (profile {args.profile}): livekit-server.yaml, sip-config.yaml, "
        f"telephony ({len(tel.trunks)} trunk(s), {len(tel.dispatch_rules)} dispatch rule(s), "
        f"agent {tel.agent_name!r}), config/agent.yaml, config/inference.yaml"
    )
    return 0


@dataclass(frozen=True)
class _LiveKitTarget:
    """A checked telephony config and the LiveKit it is applied to."""

    telephony: TelephonyConfig
    url: str
    api_key: str
    api_secret: str
    edge: tuple[str, int]
    """Where livekit-sip reaches the SIP edge (used when ``sip_edge.enabled``)."""


def _checked_target(args: argparse.Namespace, refusal: str) -> _LiveKitTarget | None:
    """Run every check; on problems print them and ``refusal``, and return None."""
    report = run_checks(args)
    if not report.ok:
        _print_problems(report)
        print(refusal, file=sys.stderr)
        return None
    assert report.stack is not None and report.telephony is not None
    # LIVEKIT_URL (e.g. from a run directory's credentials.env) points at a running stack.
    url = args.url or report.stack.env.get("LIVEKIT_URL") or report.stack.livekit_url
    return _LiveKitTarget(
        report.telephony,
        url,
        report.stack.api_key,
        report.stack.api_secret,
        report.stack.sip_edge_target,
    )


def _add_target_arguments(parser: argparse.ArgumentParser, verb: str) -> None:
    """``--telephony`` and ``--url``, shared by the commands that talk to LiveKit."""
    add_common_arguments(parser)
    parser.add_argument("--telephony", type=Path, default=None, help=f"telephony config to {verb}")
    parser.add_argument(
        "--url", default=None, help="LiveKit API URL (default: from livekit-server.yaml)"
    )


def _provision(args: argparse.Namespace) -> int:
    # Imported here: livekit-api pulls in aiohttp/protobuf, which check-config does not need.
    from worker.telephony.provision import ProvisionError, provision

    target = _checked_target(args, "provision: nothing changed (fix the config first)")
    if target is None:
        return 2
    try:
        result = asyncio.run(
            provision(
                target.telephony, target.url, target.api_key, target.api_secret, edge=target.edge
            )
        )
    except ProvisionError as err:
        print(f"provision: {err}", file=sys.stderr)
        return 1
    for line in result.summary_lines():
        print(f"provision: {line}")
    return 0


def _call(args: argparse.Namespace) -> int:
    from worker.telephony.outbound import CallRequest, OutboundError, place_call

    target = _checked_target(args, "call: nothing dialled (fix the config first)")
    if target is None:
        return 2
    request = CallRequest(
        number=args.number,
        trunk=args.trunk,
        purpose=args.purpose,
        customer=args.customer,
        flow=args.flow,
        dtmf=args.dtmf,
    )
    try:
        result = asyncio.run(
            place_call(
                target.telephony,
                request,
                url=target.url,
                api_key=target.api_key,
                api_secret=target.api_secret,
            )
        )
    except OutboundError as err:
        print(f"call: {err}", file=sys.stderr)
        return 2
    except OSError as err:  # LiveKit unreachable
        print(f"call: cannot reach LiveKit at {target.url}: {err}", file=sys.stderr)
        return 5
    status = f" (SIP {result.sip_status})" if result.sip_status else ""
    detail = f": {result.detail}" if result.detail else ""
    print(f"call: {args.number}: {result.outcome.value}{status}{detail}; room {result.room}")
    return result.outcome.exit_code


def _call_api(args: argparse.Namespace) -> int:
    from worker.telephony.call_api import CallApi, bind_problem, serve, token_from_env

    token = token_from_env()
    problem = bind_problem(args.host, token)
    if problem is not None:
        print(f"call-api: {problem}", file=sys.stderr)
        return 2
    assert token is not None
    target = _checked_target(args, "call-api: not started (fix the config first)")
    if target is None:
        return 2
    api = CallApi(
        target.telephony,
        url=target.url,
        api_key=target.api_key,
        api_secret=target.api_secret,
        token=token,
    )
    print(f"call-api: POST http://{args.host}:{args.port}/v1/calls", flush=True)
    try:
        asyncio.run(serve(api, args.host, args.port))
    except KeyboardInterrupt:
        pass
    except OSError as err:
        print(f"call-api: cannot listen on {args.host}:{args.port}: {err}", file=sys.stderr)
        return 1
    return 0


def register(subparsers: Any) -> None:
    """Add ``check-config``, ``provision``, ``call`` and ``call-api`` to the command line."""
    check = subparsers.add_parser(
        "check-config",
        help="validate livekit-server.yaml, sip-config.yaml and config/telephony.yaml",
    )
    add_common_arguments(check)
    check.add_argument("--telephony", type=Path, default=None, help="telephony config to check")
    check.set_defaults(func=_check_config)

    prov = subparsers.add_parser(
        "provision",
        help="create/update the SIP trunks and dispatch rules in LiveKit (idempotent)",
    )
    _add_target_arguments(prov, "apply")
    prov.set_defaults(func=_provision)

    call = subparsers.add_parser(
        "call",
        help="place an outbound call with the agent through an outbound trunk; exit status: "
        "0 answered, 2 refused (bad input), 3 busy, 4 no answer, 5 failed, 6 invalid number",
    )
    _add_target_arguments(call, "use")
    call.add_argument("number", help="the number to call (digits, optional leading +)")
    call.add_argument("--trunk", default=None, help="outbound trunk name (default: the only one)")
    call.add_argument("--flow", default=None, help="flow (line) the agent speaks for")
    call.add_argument("--purpose", default="", help="why we call, for the agent's context")
    call.add_argument("--customer", default="", help="the callee's name, for the greeting")
    call.add_argument("--dtmf", default="", help="digits the agent keys in once answered")
    call.set_defaults(func=_call)

    capi = subparsers.add_parser(
        "call-api",
        help="serve POST /v1/calls (outbound calls) on loopback; needs VOICESTACK_CALL_API_TOKEN",
    )
    _add_target_arguments(capi, "use")
    capi.add_argument("--host", default="127.0.0.1", help="loopback address to bind")
    capi.add_argument("--port", type=int, default=8790, help="port (default 8790)")
    capi.set_defaults(func=_call_api)
