"""Warm a call's KV cache on the inference server before the caller's next turn.

The server keeps each call's KV (one llama.cpp sequence per call) and a request only prefills
what changed since the last one. What changes between turns is known before the caller speaks:
the agent's last answer (its text as heard, which is not the token stream the model generated:
cut by the sentence limit or an interruption) and, now and then, a history trim that drops old
turns and re-prefills the rest (seconds on a CPU). :func:`prefill_call` sends that prompt as a
one-token request right after the agent's answer (and during the greeting, for the system
prompt), so the next real request only prefills the caller's new words. It decides the history
trim now, with ``reserve_chars`` left for the coming turn, so the next request keeps the same
window start and its prompt begins exactly like the warmed one.

Best effort: a failure is logged and the turn proceeds as it would have without; cancellation
(the call ended) propagates and closes the stream, which cancels the work on the server.
"""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Sequence

import aiohttp
from livekit.agents import APIError
from livekit.agents.llm import ChatContext, Tool, Toolset

from .llm import InferenceLLM

__all__ = ["prefill_call"]

logger = logging.getLogger(__name__)


async def prefill_call(
    llm: InferenceLLM,
    chat_ctx: ChatContext,
    *,
    tools: Sequence[Tool | Toolset] = (),
    reserve_chars: int = 400,
    timeout_s: float = 15.0,
) -> bool:
    """Prefill ``chat_ctx`` into the call's KV on the server; True when the server finished."""
    budget = max(200, llm.history_budget(llm._max_tokens) - reserve_chars)
    full, messages = llm.window(chat_ctx, tools, budget)
    if not full:
        return False
    start = {
        "op": "llm",
        "call_id": llm._call_id,
        "messages": messages,
        "max_tokens": 1,
        "temperature": 0.0,
    }
    try:
        async with asyncio.timeout(timeout_s):
            stream = await llm._client.open(start)
            async with stream:
                async for msg in stream.messages():
                    if msg.data is not None and msg.data.get("type") == "done":
                        return True
    except (APIError, aiohttp.ClientError, TimeoutError) as err:
        logger.info("prefill of call %s skipped: %s", llm._call_id, err)
    return False
