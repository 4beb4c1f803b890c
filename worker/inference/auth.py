"""Who may use the inference server: a shared token, required whenever it listens beyond loopback.

Whoever reaches the port can otherwise run the GPU for free, exhaust its call slots, or read
what callers said through it. The operator sets ``VOICESTACK_INFERENCE_TOKEN`` (the same value
for the server and the agent workers); the server then answers ``/v1/*`` (streams, capacity,
fault injection) only to requests with ``Authorization: Bearer <token>``. ``/healthz``,
``/readyz`` and ``/metrics`` stay open for probes and Prometheus: they carry no call content.
A server bound to a non-loopback address without a token refuses to start.
"""

from __future__ import annotations

import hmac
import ipaddress
from collections.abc import Awaitable, Callable

from aiohttp import web
from aiohttp.typedefs import Middleware

from worker.inference.protocol import TOKEN_ENV, ErrorCode, error_frame

__all__ = [
    "MIN_TOKEN_CHARS",
    "bind_problem",
    "token_middleware",
]

MIN_TOKEN_CHARS = 24
_PROTECTED = "/v1/"

Handler = Callable[[web.Request], Awaitable[web.StreamResponse]]


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def bind_problem(host: str, token: str | None) -> str | None:
    """Why the server must not start on ``host`` with ``token``, or None."""
    if token is not None and len(token) < MIN_TOKEN_CHARS:
        return f"{TOKEN_ENV} is {len(token)} characters long; use at least {MIN_TOKEN_CHARS}"
    if token is None and not _is_loopback(host):
        return (
            f"listening on {host} needs {TOKEN_ENV} (anyone who reaches the port could use the "
            "models and read what callers said); set it for the server and the agent workers, "
            "or bind 127.0.0.1"
        )
    return None


def token_middleware(token: str) -> Middleware:
    """aiohttp middleware: ``/v1/*`` needs ``Authorization: Bearer <token>`` (401 otherwise)."""
    expected = f"Bearer {token}".encode()

    @web.middleware
    async def check(request: web.Request, handler: Handler) -> web.StreamResponse:
        if request.path.startswith(_PROTECTED):
            given = request.headers.get("Authorization", "").encode()
            if not hmac.compare_digest(given, expected):
                return web.json_response(
                    error_frame(ErrorCode.UNAUTHORIZED, "missing or wrong token"), status=401
                )
        return await handler(request)

    return check
