"""Messages of the inference stream protocol (docs/inference-protocol.md) and their validation.

Every way a client can get a frame wrong ends in a :class:`StreamError` with a protocol error
code; the server turns it into an ``{"type": "error"}`` frame and closes only that stream.
"""

from __future__ import annotations

import enum
import json
import os
import re
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

__all__ = [
    "TOKEN_ENV",
    "ErrorCode",
    "LlmStart",
    "Message",
    "StartMessage",
    "StreamError",
    "SttStart",
    "TtsStart",
    "auth_headers",
    "error_frame",
    "parse_control",
    "parse_start",
]

STT_SAMPLE_RATE = 16_000


class ErrorCode(enum.StrEnum):
    BAD_REQUEST = "bad_request"
    UNKNOWN_OP = "unknown_op"
    PAYLOAD_TOO_LARGE = "payload_too_large"
    OVERLOADED = "overloaded"
    NOT_READY = "not_ready"
    INTERNAL = "internal"
    UNAUTHORIZED = "unauthorized"  # HTTP 401 on /v1/* without the shared token


class StreamError(Exception):
    """Ends one stream with an error frame; other streams are unaffected."""

    def __init__(self, code: ErrorCode, message: str) -> None:
        super().__init__(message)
        self.code = code
        self.message = message


def error_frame(code: ErrorCode, message: str) -> dict[str, str]:
    return {"type": "error", "code": code.value, "message": message}


class _Msg(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class SttStart(_Msg):
    op: Literal["stt"]
    call_id: str = Field(min_length=1, max_length=128)
    sample_rate: Literal[16000] = 16000
    language: str | None = Field(None, min_length=2, max_length=8)
    interim: bool = True
    words: bool = False
    """Every ``final`` carries word timings (``"words": [[text, start_s, end_s], ...]``)."""


class Message(_Msg):
    role: Literal["system", "user", "assistant"]
    content: str


class LlmStart(_Msg):
    op: Literal["llm"]
    call_id: str = Field(min_length=1, max_length=128)
    messages: list[Message] = Field(min_length=1, max_length=512)
    max_tokens: int = Field(128, ge=1)
    temperature: float = Field(0.7, ge=0.0, le=2.0)
    top_p: float = Field(0.95, gt=0.0, le=1.0)
    stop: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list, max_length=8
    )
    seed: int | None = Field(None, ge=0, le=2**31 - 1)


class TtsStart(_Msg):
    op: Literal["tts"]
    call_id: str = Field(min_length=1, max_length=128)
    speed: float = Field(1.0, ge=0.25, le=4.0)


StartMessage = SttStart | LlmStart | TtsStart
_START: dict[str, type[SttStart] | type[LlmStart] | type[TtsStart]] = {
    "stt": SttStart,
    "llm": LlmStart,
    "tts": TtsStart,
}


def _describe(err: ValidationError) -> str:
    parts = []
    for item in err.errors():
        where = ".".join(str(p) for p in item["loc"]) or "(message)"
        parts.append(f"{where}: {item['msg']}")
    return "; ".join(parts)


def _json_object(text: str) -> dict[str, Any]:
    try:
        data = json.loads(text)
    except json.JSONDecodeError as err:
        raise StreamError(ErrorCode.BAD_REQUEST, f"malformed JSON: {err}") from None
    except RecursionError:
        # e.g. 60k nested brackets: the decoder recurses per level.
        raise StreamError(ErrorCode.BAD_REQUEST, "malformed JSON: nested too deeply") from None
    if not isinstance(data, dict):
        raise StreamError(ErrorCode.BAD_REQUEST, "a text frame must be a JSON object")
    _check_strings(data, "(message)")
    return data


_SURROGATE = re.compile("[\ud800-\udfff]")


def _check_strings(value: object, where: str) -> None:
    """Refuse NUL and lone surrogates anywhere in a frame: JSON escapes can carry them, and
    tokenizers, Piper and UTF-8 encoders downstream fail on them (once as an internal error)."""
    if isinstance(value, str):
        if "\x00" in value:
            raise StreamError(ErrorCode.BAD_REQUEST, f"{where}: text contains a NUL character")
        if _SURROGATE.search(value):
            raise StreamError(
                ErrorCode.BAD_REQUEST, f"{where}: text is not valid Unicode (a lone surrogate)"
            )
    elif isinstance(value, dict):
        for key, item in value.items():
            _check_strings(key, where)
            _check_strings(item, f"{key}" if where == "(message)" else f"{where}.{key}")
    elif isinstance(value, list):
        for i, item in enumerate(value):
            _check_strings(item, f"{where}[{i}]")


def parse_start(text: str) -> StartMessage:
    """Validate the first frame of a stream."""
    data = _json_object(text)
    op = data.get("op")
    if op is None:
        raise StreamError(ErrorCode.BAD_REQUEST, "the first frame must have an 'op' field")
    model = _START.get(op) if isinstance(op, str) else None
    if model is None:
        raise StreamError(ErrorCode.UNKNOWN_OP, f"unknown op {op!r}; expected one of stt, llm, tts")
    try:
        return model.model_validate(data)
    except ValidationError as err:
        raise StreamError(ErrorCode.BAD_REQUEST, f"invalid {op} start: {_describe(err)}") from None


def parse_control(text: str, allowed: frozenset[str]) -> dict[str, Any]:
    """Validate a control frame (``{"type": ...}``) against the types this op accepts."""
    data = _json_object(text)
    kind = data.get("type")
    if not isinstance(kind, str) or kind not in allowed:
        raise StreamError(
            ErrorCode.BAD_REQUEST,
            f"unexpected frame type {kind!r}; expected one of {', '.join(sorted(allowed))}",
        )
    if kind == "push_text":
        if set(data) != {"type", "text"} or not isinstance(data["text"], str):
            raise StreamError(ErrorCode.BAD_REQUEST, "push_text needs exactly a string 'text'")
    elif set(data) != {"type"}:
        extra = ", ".join(sorted(set(data) - {"type"}))
        raise StreamError(ErrorCode.BAD_REQUEST, f"{kind} takes no fields (got {extra})")
    return data


TOKEN_ENV = "VOICESTACK_INFERENCE_TOKEN"
"""The shared token of the server and its clients (see :mod:`worker.inference.auth`)."""


def token_from_env() -> str | None:
    """The shared token from ``$VOICESTACK_INFERENCE_TOKEN``; None when unset or empty."""
    return os.environ.get(TOKEN_ENV) or None


def auth_headers(token: str | None = None) -> dict[str, str]:
    """A client's ``Authorization`` header for ``token`` (default: :func:`token_from_env`);
    empty without one (a loopback server without a token needs none)."""
    token = token if token is not None else token_from_env()
    return {"Authorization": f"Bearer {token}"} if token else {}
