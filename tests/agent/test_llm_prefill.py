"""prefill_call: the call's next prompt goes to the server as a one-token request, with the
history window decided now, so the following real request starts with exactly that prompt."""

from __future__ import annotations

from fake_inference import FakeScript, fake_inference
from livekit.agents import APIConnectOptions
from livekit.agents.llm import ChatContext

from worker.agent.plugins import InferenceLLM
from worker.agent.plugins.llm_prefill import prefill_call

NO_RETRY = APIConnectOptions(max_retry=0, timeout=5.0)


def _history(turns: int) -> ChatContext:
    ctx = ChatContext.empty()
    ctx.add_message(role="system", content="You are Sam.")
    for i in range(turns):
        ctx.add_message(role="user", content=f"Question number {i} about my order status?")
        ctx.add_message(role="assistant", content=f"Answer {i}: your order ships tomorrow.")
    return ctx


async def test_prefill_sends_the_next_prompt_for_one_token() -> None:
    async with fake_inference(FakeScript()) as srv:
        llm = InferenceLLM(url=srv.url, call_id="call-1", max_tokens=64)
        assert await prefill_call(llm, _history(2))
        await llm.aclose()
    [rec] = srv.streams
    assert rec.start["call_id"] == "call-1" and rec.start["max_tokens"] == 1
    assert [m["role"] for m in rec.start["messages"]] == ["system"] + ["user", "assistant"] * 2


async def test_next_request_starts_exactly_like_the_prefilled_prompt() -> None:
    async with fake_inference(FakeScript()) as srv:
        # A budget the 12-turn history overflows: the prefill trims it, with room to spare.
        llm = InferenceLLM(url=srv.url, call_id="c", max_tokens=64, max_history_chars=1200)
        ctx = _history(12)
        assert await prefill_call(llm, ctx, reserve_chars=200)
        ctx.add_message(role="user", content="And when does it arrive?")
        stream = llm.chat(chat_ctx=ctx, conn_options=NO_RETRY)
        async for _ in stream:
            pass
        await llm.aclose()
    warm, real = (s.start["messages"] for s in srv.streams)
    assert len(warm) < 1 + 24  # trimmed
    assert real[: len(warm)] == warm  # same start: the server reuses the prefilled KV
    assert real[-1]["content"] == "And when does it arrive?"


async def test_dead_server_is_not_an_error() -> None:
    llm = InferenceLLM(url="http://127.0.0.1:9", call_id="c", connect_timeout=1.0)
    assert not await prefill_call(llm, _history(1), timeout_s=3.0)
    await llm.aclose()
