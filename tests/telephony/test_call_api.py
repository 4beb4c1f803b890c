"""The outbound-call HTTP API without a LiveKit: loopback only, a token always, malformed or
refused requests answered 400 before anything is dialled."""

from __future__ import annotations

import aiohttp
import pytest
from lines_support import telephony_with_outbound
from local_http import serve_app

from worker.telephony.call_api import CallApi, bind_problem

TOKEN = "t" * 32


def test_binds_loopback_only_and_needs_a_long_token() -> None:
    assert bind_problem("127.0.0.1", TOKEN) is None
    assert "loopback only" in str(bind_problem("0.0.0.0", TOKEN))
    assert "loopback only" in str(bind_problem("10.0.0.5", TOKEN))
    assert "VOICESTACK_CALL_API_TOKEN" in str(bind_problem("127.0.0.1", None))
    assert "at least 24" in str(bind_problem("127.0.0.1", "short"))


@pytest.mark.parametrize(
    ("headers", "body", "status", "error"),
    [
        ({}, {"number": "+15550199"}, 401, "token"),
        ({"Authorization": "Bearer wrong"}, {"number": "+15550199"}, 401, "token"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"number": "12ab"}, 400, "not a phone number"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"number": "+4930"}, 400, "outside the dest"),
        ({"Authorization": f"Bearer {TOKEN}"}, {"numbr": "+1555"}, 400, "number: Field required"),
        ({"Authorization": f"Bearer {TOKEN}"}, "not json", 400, "Invalid JSON"),
    ],
)
async def test_refusals(headers: dict[str, str], body: object, status: int, error: str) -> None:
    # LiveKit at a port nobody listens on: nothing here may get as far as dialling.
    api = CallApi(
        telephony_with_outbound(),
        url="http://127.0.0.1:9",
        api_key="k",
        api_secret="s",
        token=TOKEN,
    )
    async with serve_app(api.app()) as base, aiohttp.ClientSession() as s:
        data = body if isinstance(body, str) else None
        json_body = None if isinstance(body, str) else body
        async with s.post(base + "/v1/calls", headers=headers, data=data, json=json_body) as resp:
            assert resp.status == status
            assert error in (await resp.json())["error"]
