"""``voicestack call-api``: outbound calls over HTTP, on loopback, with a token.

The same as ``voicestack call`` for a dialer or CRM on the same host::

    POST /v1/calls   Authorization: Bearer $VOICESTACK_CALL_API_TOKEN
    {"number": "+15550123", "customer": "Alex", "purpose": "your delivery",
     "trunk": null, "flow": null, "dtmf": ""}
    -> 200 {"outcome": "answered" | "busy" | "no_answer" | "failed", "room": ..., ...}
    -> 400 refused before dialling (bad number, unknown trunk, outside the destinations)
    -> 401 no or wrong token; 429 too many calls being dialled; 503 LiveKit unreachable

It binds loopback only and always needs the token (``VOICESTACK_CALL_API_TOKEN``, at least 24
characters): placing calls costs money and speaks for the company. aiohttp, because the rest
of the stack already serves HTTP with it.
"""

from __future__ import annotations

import asyncio
import hmac
import ipaddress
import os
from collections.abc import Awaitable, Callable
from typing import Annotated

from aiohttp import web
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from worker.config.telephony import TelephonyConfig
from worker.telephony.outbound import CallRequest, OutboundError, place_call

__all__ = ["TOKEN_ENV", "CallApi", "bind_problem"]

TOKEN_ENV = "VOICESTACK_CALL_API_TOKEN"
MIN_TOKEN_CHARS = 24
MAX_DIALLING = 8
"""Calls being dialled at once through the API; more are refused with 429."""


class _Body(BaseModel):
    model_config = ConfigDict(extra="forbid")

    number: Annotated[str, Field(min_length=1, max_length=32)]
    trunk: Annotated[str, Field(max_length=128)] | None = None
    purpose: Annotated[str, Field(max_length=300)] = ""
    customer: Annotated[str, Field(max_length=100)] = ""
    flow: Annotated[str, Field(max_length=64)] | None = None
    dtmf: Annotated[str, Field(max_length=32)] = ""


def bind_problem(host: str, token: str | None) -> str | None:
    """Why the API must not start on ``host`` with ``token``, or None."""
    try:
        loopback = host == "localhost" or ipaddress.ip_address(host).is_loopback
    except ValueError:
        loopback = False
    if not loopback:
        return f"the call API listens on loopback only, not {host}"
    if not token or len(token) < MIN_TOKEN_CHARS:
        return f"set {TOKEN_ENV} (at least {MIN_TOKEN_CHARS} characters)"
    return None


Dial = Callable[[CallRequest], Awaitable[object]]


class CallApi:
    """The HTTP front of :func:`~worker.telephony.outbound.place_call`."""

    def __init__(
        self, cfg: TelephonyConfig, *, url: str, api_key: str, api_secret: str, token: str
    ) -> None:
        self._cfg = cfg
        self._lk = (url, api_key, api_secret)
        self._expected = f"Bearer {token}".encode()
        self._dialling = 0

    def app(self) -> web.Application:
        """The aiohttp application (bodies over 16 KiB are refused by aiohttp with 413)."""
        app = web.Application(client_max_size=16 * 1024)
        app.router.add_post("/v1/calls", self._calls)
        return app

    async def _calls(self, request: web.Request) -> web.Response:
        given = request.headers.get("Authorization", "").encode()
        if not hmac.compare_digest(given, self._expected):
            return _error(401, "missing or wrong token")
        try:
            body = _Body.model_validate_json(await request.read())
        except ValidationError as err:
            first = err.errors()[0]
            where = ".".join(str(p) for p in first["loc"]) or "body"
            return _error(400, f"{where}: {first['msg']}")
        if self._dialling >= MAX_DIALLING:
            return _error(429, f"{MAX_DIALLING} calls are being dialled; retry shortly")
        self._dialling += 1
        try:
            url, key, secret = self._lk
            result = await place_call(
                self._cfg,
                CallRequest(**body.model_dump()),
                url=url,
                api_key=key,
                api_secret=secret,
            )
        except OutboundError as err:
            return _error(400, str(err))
        except OSError as err:
            return _error(503, f"LiveKit unreachable: {err}")
        finally:
            self._dialling -= 1
        return web.json_response(
            {
                "outcome": result.outcome.value,
                "room": result.room,
                "sip_status": result.sip_status,
                "detail": result.detail,
            }
        )


def _error(status: int, message: str) -> web.Response:
    return web.json_response({"error": message}, status=status)


async def serve(api: CallApi, host: str, port: int) -> None:
    """Serve until cancelled."""
    runner = web.AppRunner(api.app())
    await runner.setup()
    site = web.TCPSite(runner, host, port)
    await site.start()
    try:
        await asyncio.Event().wait()
    finally:
        await runner.cleanup()


def token_from_env() -> str | None:
    """The API token from the environment (None if unset or empty)."""
    return os.environ.get(TOKEN_ENV) or None
