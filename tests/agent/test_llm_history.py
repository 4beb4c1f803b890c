"""The LLM plugin keeps a long call's prompt inside the model's context: the chat history is
trimmed (system instructions and the newest turns kept, oldest turns dropped first), and a
``payload_too_large`` refusal is retried once with half of it. Against the fake inference
server (fake_inference.py), no model needed."""

from __future__ import annotations

import itertools
from typing import Any

import pytest
from aiohttp import web
from fake_inference import FakeInferenceServer, StreamRecord
from livekit.agents import APIConnectOptions
from livekit.agents.llm import ChatContext

from worker.agent.plugins import InferenceLLM, ServerError
from worker.agent.plugins.llm import (
    DEFAULT_CONTEXT_TOKENS,
    history_budget_chars,
    history_window,
    trim_messages,
)

NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)
SYSTEM = "You are the support line of Example Corp. Be brief and friendly."
TURNS = 40


def _user(i: int) -> str:
    return f"Turn {i}: I have another question about my order number {1000 + i}, " + "a" * 80


def _assistant(i: int) -> str:
    return f"Answer {i}: your order {1000 + i} is on its way and should arrive soon. " + "b" * 90


def _long_call(turns: int = TURNS) -> ChatContext:
    """A call of ``turns`` turns; the newest user turn is still unanswered."""
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content=SYSTEM)
    for i in range(turns - 1):
        ctx.add_message(role="user", content=_user(i))
        ctx.add_message(role="assistant", content=_assistant(i))
    ctx.add_message(role="user", content=_user(turns - 1))
    return ctx


def _size(messages: list[dict[str, str]]) -> int:
    return sum(len(m["content"]) + 16 for m in messages)


class _RefusingServer(FakeInferenceServer):
    """Refuses (``payload_too_large``) every LLM stream with more than ``max_messages``."""

    def __init__(self, max_messages: int) -> None:
        super().__init__()
        self.max_messages = max_messages

    async def _llm(self, ws: web.WebSocketResponse, rec: StreamRecord) -> None:
        if len(rec.start["messages"]) > self.max_messages:
            rec.ended = "error"
            await ws.send_json(
                {"type": "error", "code": "payload_too_large", "message": "prompt too long"}
            )
            await ws.close()
            return
        await super()._llm(ws, rec)


async def _chat(server: FakeInferenceServer, ctx: ChatContext, **kwargs: Any) -> str:
    await server.start()
    try:
        plugin = InferenceLLM(url=server.url, **kwargs)
        try:
            chunks = [c async for c in plugin.chat(chat_ctx=ctx, conn_options=NO_RETRY)]
        finally:
            await plugin.aclose()
    finally:
        await server.stop()
    return "".join(c.delta.content or "" for c in chunks if c.delta)


def test_default_budget_fits_smollm2_context_with_the_reply() -> None:
    assert DEFAULT_CONTEXT_TOKENS == 2048  # the bundled SmolLM2's n_ctx
    budget = history_budget_chars(DEFAULT_CONTEXT_TOKENS, 96)
    # ~4 chars per token, and still under the context when the estimate is 25 % too kind.
    assert 4000 < budget < (2048 - 96) * 4
    assert history_budget_chars(512, 512) == 0


async def test_forty_turn_call_sends_system_prompt_and_newest_turns() -> None:
    ctx = _long_call()
    server = FakeInferenceServer()
    text = await _chat(server, ctx, max_tokens=96)
    assert text == "Hi, how can I help?"
    assert len(server.streams) == 1
    sent = server.streams[0].start["messages"]
    full = 1 + 2 * TURNS - 1
    assert len(sent) < full  # trimmed
    assert _size(sent) <= history_budget_chars(DEFAULT_CONTEXT_TOKENS, 96)
    assert sent[0] == {"role": "system", "content": SYSTEM}
    assert sent[-1] == {"role": "user", "content": _user(TURNS - 1)}
    # A contiguous run of the newest turns, opening with a user turn.
    rest = sent[1:]
    assert rest[0]["role"] == "user"
    first = int(rest[0]["content"].split(":")[0].removeprefix("Turn "))
    expected: list[dict[str, str]] = []
    for i in range(first, TURNS - 1):
        expected += [
            {"role": "user", "content": _user(i)},
            {"role": "assistant", "content": _assistant(i)},
        ]
    expected.append({"role": "user", "content": _user(TURNS - 1)})
    assert rest == expected
    assert first > 0 and len(rest) >= 5  # the oldest turns went, a useful history stayed


async def test_short_call_is_sent_whole() -> None:
    ctx = _long_call(turns=3)
    server = FakeInferenceServer()
    await _chat(server, ctx)
    assert len(server.streams[0].start["messages"]) == 1 + 2 * 3 - 1


async def test_max_history_chars_is_configurable() -> None:
    ctx = _long_call()
    server = FakeInferenceServer()
    budget = len(SYSTEM) + 16 + 3 * 200
    await _chat(server, ctx, max_history_chars=budget)
    sent = server.streams[0].start["messages"]
    assert sent[0]["role"] == "system" and sent[-1]["content"] == _user(TURNS - 1)
    assert _size(sent) <= budget
    # Over budget, the window restarts at half of it: here only the newest turn fits.
    assert sent[1:] == [{"role": "user", "content": _user(TURNS - 1)}]


def test_newest_message_and_system_survive_a_tiny_budget() -> None:
    messages = [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": "old"},
        {"role": "assistant", "content": "older answer"},
        {"role": "user", "content": "x" * 500},
    ]
    assert trim_messages(messages, 10) == [messages[0], messages[-1]]
    assert trim_messages(messages, 10_000) == messages


def test_window_does_not_open_with_an_assistant_message() -> None:
    messages = [
        {"role": "system", "content": "s"},
        {"role": "user", "content": "u" * 100},
        {"role": "assistant", "content": "a" * 100},
        {"role": "user", "content": "u" * 100},
    ]
    # Room for the newest two (assistant + user) only: the assistant one goes as well.
    budget = 1 + 16 + 2 * (100 + 16)
    assert trim_messages(messages, budget) == [messages[0], messages[3]]


async def test_payload_too_large_is_retried_once_with_half_the_history() -> None:
    ctx = _long_call()
    # The estimate sends more than this server takes: the first try is refused.
    server = _RefusingServer(max_messages=45)
    text = await _chat(server, ctx, max_history_chars=100_000, context_tokens=100_000)
    assert text == "Hi, how can I help?"
    assert len(server.streams) == 2 and server.streams[0].ended == "error"
    assert server.streams[1].ended != "error"  # the tokens above came from this one
    first, second = (s.start["messages"] for s in server.streams)
    assert len(first) == 1 + 2 * TURNS - 1  # the whole history fitted the (large) budget
    assert second[0] == {"role": "system", "content": SYSTEM}
    assert second[-1] == {"role": "user", "content": _user(TURNS - 1)}
    rest = second[1:]
    assert rest[0]["role"] == "user"
    assert len(rest) in ((len(first) - 1) // 2, (len(first) - 1) // 2 - 1)
    assert rest == first[len(first) - len(rest) :]  # the newest half


async def test_second_refusal_fails_the_request() -> None:
    ctx = _long_call()
    server = _RefusingServer(max_messages=2)
    with pytest.raises(ServerError) as err:
        await _chat(server, ctx)
    assert err.value.code == "payload_too_large"
    assert len(server.streams) == 2  # one retry, not more


async def test_other_errors_are_not_retried() -> None:
    ctx = _long_call(turns=2)
    server = FakeInferenceServer()
    server.script.error_code = "bad_request"
    with pytest.raises(ServerError):
        await _chat(server, ctx)
    assert len(server.streams) == 1


def test_the_window_start_holds_until_the_budget_is_exceeded() -> None:
    """The server reuses a call's KV cache for an unchanged prompt beginning: the window keeps
    its start while it fits, and on overflow jumps to half the budget, not one turn ahead."""
    system = {"role": "system", "content": "s" * 50}
    history: list[dict[str, str]] = []
    starts = []
    start = 0
    for i in range(30):
        history += [{"role": "user", "content": f"q{i} " + "x" * 96}]
        window, start = history_window([system, *history], 1000, start, low_water=0.5)
        assert window[0] == system and window[-1] == history[-1]
        assert _size(window) <= 1000
        starts.append(start)
        history += [{"role": "assistant", "content": f"a{i} " + "y" * 96}]
    changes = sum(1 for a, b in itertools.pairwise(starts) if a != b)
    # 30 turns of ~230 chars through a 1000-char window: a new start every ~2 turns at
    # most, never on every turn.
    assert 0 < changes <= len(starts) // 2
    assert starts == sorted(starts)


def test_a_history_that_fits_is_sent_whole_even_if_it_opens_with_the_greeting() -> None:
    greeting = [
        {"role": "system", "content": "be brief"},
        {"role": "assistant", "content": "Hello, how can I help?"},
        {"role": "user", "content": "What are your opening hours?"},
    ]
    assert history_window(greeting, 2400, 0, low_water=0.5) == (greeting, 0)
