"""The ``llm`` stream: chat messages in, tokens out, cancellable at any token."""

from __future__ import annotations

import asyncio
import time

from worker.inference.engines.llm import ChatMessage, PromptTooLong, SamplingParams
from worker.inference.jobs import LlmJob, LlmResult
from worker.inference.protocol import ErrorCode, LlmStart, StreamError, parse_control
from worker.inference.runtime import Overloaded, Partial, WorkState
from worker.inference.scheduler import Stage
from worker.inference.step_engines import estimate_prompt_tokens
from worker.inference.stream_io import ClientGone, StreamContext, cancel_and_wait

__all__ = ["run_llm_stream"]

_CONTROL = frozenset({"cancel"})


async def _watch_client(ctx: StreamContext) -> None:
    """Reads frames while tokens stream out: returns on a cancel frame, raises ClientGone when
    the client goes away and StreamError for anything else."""
    frame = await ctx.receive()
    if frame is None:
        raise ClientGone("client closed the stream")
    if isinstance(frame, bytes):
        raise StreamError(ErrorCode.BAD_REQUEST, "an llm stream takes no binary frames")
    parse_control(frame, _CONTROL)


def _too_long(error: BaseException | None) -> bool:
    # The batched engine refuses an over-long prompt with a ValueError naming the context.
    return error is not None and "exceeds the context" in str(error)


async def run_llm_stream(ctx: StreamContext, start: LlmStart) -> None:
    """Serve one LLM stream until ``done`` or an error."""
    cap = ctx.config.llm.max_tokens
    if start.max_tokens > cap:
        raise StreamError(ErrorCode.BAD_REQUEST, f"max_tokens {start.max_tokens} exceeds {cap}")
    job = LlmJob(
        messages=tuple(ChatMessage(m.role, m.content) for m in start.messages),
        params=SamplingParams(
            max_tokens=start.max_tokens,
            temperature=start.temperature,
            top_p=start.top_p,
            stop=tuple(start.stop),
            seed=start.seed,
        ),
    )
    t0 = time.monotonic()
    # Every piece holds at least one token, plus the held-back tail at the end.
    work = ctx.engines.llm.submit(
        job,
        stream_id=ctx.stream_id,
        critical=True,
        max_partials=start.max_tokens + 1,
        call_id=start.call_id,
        stage=Stage.LLM_FIRST_CLAUSE,
        units=estimate_prompt_tokens(sum(len(m.content) for m in start.messages)),
    )
    watcher = asyncio.create_task(_watch_client(ctx), name=f"llm-watch-{ctx.stream_id}")
    try:
        first = True
        while True:
            next_event = asyncio.ensure_future(work.next_event())
            done, _ = await asyncio.wait({next_event, watcher}, return_when=asyncio.FIRST_COMPLETED)
            if next_event in done:
                event = next_event.result()
            else:
                next_event.cancel()
                work.cancel()
                watcher.result()  # re-raises a protocol error or the client's departure
                # A cancel frame: the engine stops at its next token and still reports usage.
                event = await work.wait()
            if not isinstance(event, Partial):
                break
            if first:
                ctx.observe_stage("llm_first_token", t0)
                first = False
            await ctx.send_json({"type": "token", "text": event.value})
        if event.state == WorkState.FAILED:
            if isinstance(event.error, PromptTooLong) or _too_long(event.error):
                raise StreamError(ErrorCode.PAYLOAD_TOO_LARGE, str(event.error))
            if isinstance(event.error, Overloaded):
                raise StreamError(ErrorCode.OVERLOADED, str(event.error))
            raise StreamError(ErrorCode.INTERNAL, f"llm engine failed: {event.error}")
        result = event.result
        finish = "cancelled" if event.state == WorkState.CANCELLED else None
        usage = {"prompt_tokens": 0, "completion_tokens": 0}
        if isinstance(result, LlmResult):
            finish = finish or result.finish_reason
            usage = {
                "prompt_tokens": result.prompt_tokens,
                "completion_tokens": result.completion_tokens,
            }
        await ctx.send_json({"type": "done", "finish_reason": finish or "stop", "usage": usage})
    finally:
        work.cancel()  # no-op when finished; frees the engine when the client went away
        await cancel_and_wait(watcher)
