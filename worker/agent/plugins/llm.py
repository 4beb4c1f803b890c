"""Language-model plugin for livekit-agents, backed by the inference server's ``llm`` stream.

``InferenceLLM.chat(chat_ctx=..., tools=...)`` sends the conversation; tokens stream back as
``ChatChunk``s. The server only produces text, so tool use is a prompt convention: the tool
schemas go into the system message and the model answers a call as
``<tool_call>{"name": ..., "arguments": {...}}</tool_call>``. :class:`ToolCallParser` cuts those
blocks out of the token stream and emits each call whole in one chunk, as livekit-agents
requires; the text around them streams through unchanged.

The server refuses a prompt that does not fit the model's context (``payload_too_large``), and a
long call's chat history grows every turn, so each request sends a trimmed history
(:func:`trim_messages`): the system instructions and the newest turns that fit a character
budget (about 4 characters per token, with room left for the reply). Should the server still
refuse, the request is retried once with half of that history.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

from livekit.agents import APIConnectOptions, APIError, llm, utils
from livekit.agents.llm import ChatContext, FunctionToolCall
from livekit.agents.llm.tool_context import (
    Tool,
    ToolChoice,
    Toolset,
    get_raw_function_info,
    is_function_tool,
    is_raw_function_tool,
)
from livekit.agents.llm.utils import build_legacy_openai_schema
from livekit.agents.types import DEFAULT_API_CONNECT_OPTIONS, NOT_GIVEN, NotGivenOr

from ._client import InferencePlugin, ServerError
from .sentence_limit import SentenceLimit

__all__ = [
    "DEFAULT_CONTEXT_TOKENS",
    "InferenceLLM",
    "InferenceLLMStream",
    "ToolCallParser",
    "chat_ctx_to_messages",
    "history_budget_chars",
    "history_window",
    "trim_messages",
]

logger = logging.getLogger(__name__)

TOOL_OPEN = "<tool_call>"
TOOL_CLOSE = "</tool_call>"

DEFAULT_CONTEXT_TOKENS = 2048
"""Context window the history is sized for by default: the bundled SmolLM2's ``n_ctx``
(``context_length`` in models/manifest.toml, the inference server's default ``llm.n_ctx``)."""
_CHARS_PER_TOKEN = 4  # English prose; names, digits and JSON take more tokens per character
_PROMPT_SHARE = 0.75  # of what the estimate says fits: the slack for that estimation error
_MESSAGE_OVERHEAD_CHARS = 16  # the chat template's role markers around each message (~4 tokens)


def _tool_schemas(tools: Sequence[Tool | Toolset]) -> list[dict[str, Any]]:
    schemas: list[dict[str, Any]] = []
    for tool in tools:
        if isinstance(tool, Toolset):
            schemas.extend(_tool_schemas(tool.tools))
        elif is_function_tool(tool):
            schemas.append(build_legacy_openai_schema(tool, internally_tagged=True))
        elif is_raw_function_tool(tool):
            schemas.append(dict(get_raw_function_info(tool).raw_schema))
        # Provider-side tools (web search etc.) have no meaning for a local model: skipped.
    return schemas


def _tools_prompt(schemas: list[dict[str, Any]]) -> str:
    listing = "\n".join(json.dumps(s, separators=(",", ":")) for s in schemas)
    return (
        "You can call these tools:\n"
        f"{listing}\n"
        f"To call one, answer with {TOOL_OPEN}"
        '{"name": "<tool name>", "arguments": {<arguments as JSON>}}'
        f"{TOOL_CLOSE} and nothing else."
    )


def chat_ctx_to_messages(
    chat_ctx: ChatContext, tools: Sequence[Tool | Toolset] = ()
) -> list[dict[str, str]]:
    """The protocol's ``messages`` (system/user/assistant) for a livekit ``ChatContext``.

    Tool calls and their outputs are rendered in the same ``<tool_call>`` convention the
    model is asked to use, so a multi-step tool conversation reads consistently.
    """
    messages: list[dict[str, str]] = []
    for item in chat_ctx.items:
        if item.type == "message":
            text = item.text_content or ""
            if not text:
                continue
            role = "system" if item.role in ("system", "developer") else item.role
            messages.append({"role": role, "content": text})
        elif item.type == "function_call":
            call = json.dumps({"name": item.name, "arguments": _json_or_str(item.arguments)})
            messages.append({"role": "assistant", "content": f"{TOOL_OPEN}{call}{TOOL_CLOSE}"})
        elif item.type == "function_call_output":
            messages.append(
                {"role": "user", "content": f"<tool_response>{item.output}</tool_response>"}
            )
    schemas = _tool_schemas(tools)
    if schemas:
        prompt = _tools_prompt(schemas)
        if messages and messages[0]["role"] == "system":
            messages[0] = {"role": "system", "content": messages[0]["content"] + "\n\n" + prompt}
        else:
            messages.insert(0, {"role": "system", "content": prompt})
    # Several system messages (instructions plus handoff notes) are merged: many GGUF chat
    # templates accept only one, at the start.
    systems = [m["content"] for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    return ([{"role": "system", "content": "\n\n".join(systems)}] if systems else []) + rest


HISTORY_LOW_WATER = 0.5
"""When the history outgrows its budget, the window restarts at half of it (see
:func:`history_window`)."""


def history_budget_chars(context_tokens: int, max_tokens: int) -> int:
    """Characters of prompt (contents plus per-message overhead) that fit ``context_tokens``
    together with a reply of ``max_tokens``, estimated at ~4 characters per token with a
    margin. 2048 tokens and a 96-token reply give 5856 characters."""
    return max(0, int((context_tokens - max_tokens) * _CHARS_PER_TOKEN * _PROMPT_SHARE))


def _cost(message: dict[str, str]) -> int:
    return len(message["content"]) + _MESSAGE_OVERHEAD_CHARS


def trim_messages(messages: list[dict[str, str]], max_chars: int) -> list[dict[str, str]]:
    """The newest part of ``messages`` whose size fits ``max_chars``.

    System messages are always kept; the other messages (user, assistant, tool calls and their
    outputs) are dropped oldest first. The newest message is always kept, even if it alone
    does not fit (without it there is nothing to answer). A window that would start with an
    assistant message starts at the next user message instead, so the history still opens
    with the caller's turn.
    """
    return history_window(messages, max_chars)[0]


def history_window(
    messages: list[dict[str, str]], max_chars: int, start: int = 0, *, low_water: float = 1.0
) -> tuple[list[dict[str, str]], int]:
    """Like :func:`trim_messages`, but keeping the window's start where it was (``start``, an
    index into the non-system messages) while the window fits ``max_chars``; when it no longer
    does, the start jumps ahead until what is left fits ``low_water * max_chars``. Returns the
    messages to send and the new start.

    Why: the server keeps each call's KV cache, so a prompt whose beginning did not change is
    only prefilled for its new turn; sliding the window by one turn per request would change
    the beginning every time and re-prefill the whole history (seconds on a CPU). Dropping
    many old turns at once re-prefills once every several turns instead.
    """
    systems = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    room = max_chars - sum(_cost(m) for m in systems)
    start = max(0, min(start, len(rest) - 1))
    if sum(_cost(m) for m in rest[start:]) > room:
        left = room * low_water
        keep = 0
        for message in reversed(rest):
            left -= _cost(message)
            if left < 0 and keep > 0:
                break
            keep += 1
        start = len(rest) - keep
        # A trimmed window opens with the caller's turn (an untrimmed one is sent as it is:
        # the history may well start with the agent's greeting).
        while start < len(rest) - 1 and rest[start]["role"] != "user":
            start += 1
    if start == 0:
        return list(messages), 0
    return systems + rest[start:], start


def _halve_history(messages: list[dict[str, str]]) -> list[dict[str, str]] | None:
    """``messages`` with the older half of the non-system messages dropped; ``None`` when
    there is nothing left to drop."""
    systems = [m for m in messages if m["role"] == "system"]
    rest = [m for m in messages if m["role"] != "system"]
    if len(rest) <= 1:
        return None
    window = rest[len(rest) - len(rest) // 2 :]
    while len(window) > 1 and window[0]["role"] != "user":
        window = window[1:]
    return systems + window


def _json_or_str(text: str) -> Any:
    try:
        return json.loads(text)
    except json.JSONDecodeError:
        return text


@dataclass
class ParsedPiece:
    """What the parser releases: speakable ``text`` and/or complete ``calls``."""

    text: str = ""
    calls: list[FunctionToolCall] = field(default_factory=list)


class ToolCallParser:
    """Incremental splitter of a token stream into text and whole ``<tool_call>`` blocks.

    Text that might be the start of ``<tool_call>`` is held back until the next token shows
    what it is, so a tool call never leaks into speech and is never emitted in pieces.
    """

    def __init__(self) -> None:
        self._buf = ""
        self._in_call = False

    def feed(self, token: str) -> ParsedPiece:
        """Add a token; return what can be released now."""
        self._buf += token
        out = ParsedPiece()
        while True:
            if self._in_call:
                end = self._buf.find(TOOL_CLOSE)
                if end < 0:
                    return out
                body, self._buf = self._buf[:end], self._buf[end + len(TOOL_CLOSE) :]
                self._in_call = False
                out.calls.extend(_parse_calls(body))
                continue
            start = self._buf.find(TOOL_OPEN)
            if start >= 0:
                out.text += self._buf[:start]
                self._buf = self._buf[start + len(TOOL_OPEN) :]
                self._in_call = True
                continue
            keep = _partial_prefix_len(self._buf, TOOL_OPEN)
            out.text += self._buf[: len(self._buf) - keep]
            self._buf = self._buf[len(self._buf) - keep :]
            return out

    def finish(self) -> ParsedPiece:
        """End of stream: release held-back text; an unterminated call is parsed if it can be."""
        out = ParsedPiece()
        if self._in_call:
            out.calls.extend(_parse_calls(self._buf))
        else:
            out.text = self._buf
        self._buf, self._in_call = "", False
        return out


def _partial_prefix_len(text: str, tag: str) -> int:
    """Length of the longest suffix of ``text`` that is a proper prefix of ``tag``."""
    for n in range(min(len(tag) - 1, len(text)), 0, -1):
        if text.endswith(tag[:n]):
            return n
    return 0


def _parse_calls(body: str) -> list[FunctionToolCall]:
    try:
        data = json.loads(body.strip())
    except json.JSONDecodeError:
        logger.warning("dropping a malformed tool call from the model: %r", body[:200])
        return []
    items = data if isinstance(data, list) else [data]
    calls: list[FunctionToolCall] = []
    for entry in items:
        if not isinstance(entry, dict) or not isinstance(entry.get("name"), str):
            logger.warning("dropping a tool call without a name: %r", entry)
            continue
        args = entry.get("arguments", {})
        calls.append(
            FunctionToolCall(
                name=entry["name"],
                arguments=args if isinstance(args, str) else json.dumps(args),
                call_id=utils.shortuuid("call_"),
            )
        )
    return calls


class InferenceLLM(InferencePlugin, llm.LLM):
    """livekit-agents LLM whose generation runs on the voicestack inference server."""

    def __init__(
        self,
        *,
        url: str,
        max_tokens: int = 128,
        temperature: float = 0.7,
        top_p: float = 0.95,
        call_id: str = "",
        connect_timeout: float = 5.0,
        context_tokens: int = DEFAULT_CONTEXT_TOKENS,
        max_history_chars: int | None = None,
        max_sentences: int | None = None,
    ) -> None:
        """``context_tokens`` is the server model's context window; the chat history sent is
        trimmed to the smaller of ``max_history_chars`` and :func:`history_budget_chars` of
        ``context_tokens`` and the request's ``max_tokens``. ``max_sentences`` ends a reply
        (and cancels its generation on the server) after that many sentences."""
        super().__init__()
        self._connect(url, call_id=call_id, connect_timeout=connect_timeout)
        self._max_tokens = max_tokens
        self._temperature = temperature
        self._top_p = top_p
        self._context_tokens = context_tokens
        self._max_history_chars = max_history_chars
        self._max_sentences = max_sentences
        self._trim_logged = False
        self._history_start = 0  # the call's history window (see history_window)

    def history_budget(self, max_tokens: int) -> int:
        """Characters of prompt a request with a ``max_tokens`` reply may send."""
        fits = history_budget_chars(self._context_tokens, max_tokens)
        if self._max_history_chars is not None:
            return min(self._max_history_chars, fits)
        return fits

    def window(
        self, chat_ctx: ChatContext, tools: Sequence[Tool | Toolset], budget_chars: int
    ) -> tuple[list[dict[str, str]], list[dict[str, str]]]:
        """``(all messages, the ones to send)`` for ``chat_ctx`` within ``budget_chars``; moves
        the call's window start (:func:`history_window`) when the history outgrew it."""
        full = chat_ctx_to_messages(chat_ctx, tools)
        messages, self._history_start = history_window(
            full, budget_chars, self._history_start, low_water=HISTORY_LOW_WATER
        )
        return full, messages

    def chat(
        self,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool] | None = None,
        conn_options: APIConnectOptions = DEFAULT_API_CONNECT_OPTIONS,
        parallel_tool_calls: NotGivenOr[bool] = NOT_GIVEN,
        tool_choice: NotGivenOr[ToolChoice] = NOT_GIVEN,
        extra_kwargs: NotGivenOr[dict[str, Any]] = NOT_GIVEN,
    ) -> InferenceLLMStream:
        # tool_choice "none" means: describe no tools, so the model cannot call any.
        use_tools = list(tools or []) if tool_choice != "none" else []
        return InferenceLLMStream(
            self,
            chat_ctx=chat_ctx,
            tools=use_tools,
            conn_options=conn_options,
            extra=dict(extra_kwargs) if utils.is_given(extra_kwargs) else {},
        )

    async def aclose(self) -> None:
        await self._client.aclose()
        await super().aclose()


class InferenceLLMStream(llm.LLMStream):
    """One generation: ``ChatChunk``s with text deltas, whole tool calls, then usage."""

    def __init__(
        self,
        llm_: InferenceLLM,
        *,
        chat_ctx: ChatContext,
        tools: list[Tool],
        conn_options: APIConnectOptions,
        extra: dict[str, Any],
    ) -> None:
        super().__init__(llm_, chat_ctx=chat_ctx, tools=tools, conn_options=conn_options)
        self._owner = llm_
        self._extra = extra
        # Text already reached the listener: a retry would repeat it, so do not retry then.
        self._retry_on_chunk_sent = False

    async def _run(self) -> None:
        owner = self._owner
        start: dict[str, Any] = {
            "op": "llm",
            "call_id": owner._call_id,
            "max_tokens": owner._max_tokens,
            "temperature": owner._temperature,
            "top_p": owner._top_p,
        }
        for key in ("max_tokens", "temperature", "top_p", "stop", "seed"):
            if key in self._extra:
                start[key] = self._extra[key]
        full, messages = owner.window(
            self._chat_ctx, self._tools, owner.history_budget(int(start["max_tokens"]))
        )
        if len(messages) < len(full) and not owner._trim_logged:
            owner._trim_logged = True
            logger.info(
                "chat history over the prompt budget: sending the newest %d of %d messages "
                "(further trims are not logged)",
                len(messages),
                len(full),
            )
        try:
            await self._generate({**start, "messages": messages})
        except ServerError as err:
            # Refused before any token: the prompt is longer than the estimate said. One more
            # try with half the history; a second refusal fails the request.
            shorter = _halve_history(messages) if err.code == "payload_too_large" else None
            if shorter is None:
                raise
            logger.warning(
                "inference server refused the prompt as too long (%d messages); retrying once "
                "with the newest %d of %d",
                len(messages),
                len(shorter),
                len(full),
            )
            await self._generate({**start, "messages": shorter})

    async def _generate(self, start: dict[str, Any]) -> None:
        owner = self._owner
        request_id = utils.shortuuid("llm_")
        parser = ToolCallParser() if self._tools else None
        limit = SentenceLimit(owner._max_sentences) if owner._max_sentences else None
        stream = await owner._client.open(start, connect_timeout=self._conn_options.timeout)
        async with stream:
            async for msg in stream.messages():
                data = msg.data
                if data is None:
                    continue
                kind = data.get("type")
                if kind == "token":
                    token = str(data.get("text", ""))
                    if parser is None:
                        self._send(request_id, limit.feed(token) if limit else token, [])
                    else:
                        piece = parser.feed(token)
                        text = limit.feed(piece.text) if limit else piece.text
                        self._send(request_id, text, piece.calls)
                    if limit is not None and limit.done:
                        # Enough said: leaving the block closes the socket, which cancels the
                        # rest of the generation on the server.
                        return
                elif kind == "done":
                    if parser is not None:
                        piece = parser.finish()
                        self._send(request_id, piece.text, piece.calls)
                    usage = data.get("usage") or {}
                    prompt = int(usage.get("prompt_tokens", 0))
                    completion = int(usage.get("completion_tokens", 0))
                    self._event_ch.send_nowait(
                        llm.ChatChunk(
                            id=request_id,
                            usage=llm.CompletionUsage(
                                completion_tokens=completion,
                                prompt_tokens=prompt,
                                total_tokens=prompt + completion,
                            ),
                        )
                    )
                    return
        raise APIError("inference server closed the LLM stream before 'done'")

    def _send(self, request_id: str, text: str, calls: list[FunctionToolCall]) -> None:
        if not text and not calls:
            return
        self._event_ch.send_nowait(
            llm.ChatChunk(
                id=request_id,
                delta=llm.ChoiceDelta(role="assistant", content=text or None, tool_calls=calls),
            )
        )
