"""A GGUF model loaded through llama.cpp's low-level API: weights, vocabulary, chat template.

One :class:`LlamaModel` can back several contexts (:func:`new_context`); the batched engine
(``llama_batch.BatchedLlama``) creates exactly one. Like the engine, a model belongs to one owner
thread; nothing here is thread-safe.
"""

from __future__ import annotations

import ctypes
import logging
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any, Literal

import jinja2
import llama_cpp
from llama_cpp.llama_chat_format import Jinja2ChatFormatter

__all__ = ["ChatMessage", "Device", "LlamaModel", "ModelLoadError", "new_context"]

Device = Literal["cpu", "cuda"]
ChatMessage = Mapping[str, str]
ROLES = frozenset({"system", "user", "assistant"})

_backend_ready = False


class ModelLoadError(RuntimeError):
    """The GGUF file could not be loaded (or a context could not be created for it)."""


def _init_backend(verbose: bool) -> None:
    global _backend_ready
    # llama-cpp-python routes llama.cpp's logging to this logger; below ERROR it prints every
    # tensor it loads to stderr.
    logging.getLogger("llama-cpp-python").setLevel(logging.DEBUG if verbose else logging.ERROR)
    if not _backend_ready:
        llama_cpp.llama_backend_init()
        _backend_ready = True


class LlamaModel:
    """Weights + vocabulary of one GGUF file; frees them on :meth:`close`."""

    def __init__(self, path: str | Path, *, device: Device = "cpu", verbose: bool = False) -> None:
        path = Path(path)
        if device not in ("cpu", "cuda"):
            raise ValueError(f"device must be 'cpu' or 'cuda', got {device!r}")
        if not path.is_file():
            raise ModelLoadError(f"LLM model file not found: {path}")
        _init_backend(verbose)
        if device == "cuda" and not llama_cpp.llama_supports_gpu_offload():
            # Otherwise llama.cpp would quietly run every layer on the CPU.
            raise ModelLoadError(
                "device 'cuda' requested but this llama-cpp-python build has no GPU offload "
                "(reinstall it with CMAKE_ARGS=-DGGML_CUDA=on)"
            )
        self.path = path
        self.device: Device = device
        params = llama_cpp.llama_model_default_params()
        # -1 offloads every layer; 0 keeps the whole model on the CPU.
        params.n_gpu_layers = -1 if device == "cuda" else 0
        model = llama_cpp.llama_model_load_from_file(str(path).encode(), params)
        if not model:
            raise ModelLoadError(f"llama.cpp could not load {path} (not a valid GGUF model?)")
        self._model: Any = model
        self._vocab: Any = llama_cpp.llama_model_get_vocab(model)
        self.n_vocab: int = llama_cpp.llama_vocab_n_tokens(self._vocab)
        self.n_ctx_train: int = llama_cpp.llama_model_n_ctx_train(model)
        self._piece_buf = ctypes.create_string_buffer(256)
        self._formatter = self._load_chat_template()

    @property
    def handle(self) -> Any:
        """The ``llama_model *`` pointer (for :func:`new_context`)."""
        if self._model is None:
            raise RuntimeError("model is closed")
        return self._model

    def _load_chat_template(self) -> Jinja2ChatFormatter:
        template = llama_cpp.llama_model_chat_template(self._model, None)
        if not template:
            self.close()
            raise ModelLoadError(f"{self.path} has no tokenizer.chat_template in its metadata")
        bos = self._special_text(llama_cpp.llama_vocab_bos(self._vocab))
        eos = self._special_text(llama_cpp.llama_vocab_eos(self._vocab))
        self._bos_text = bos
        return Jinja2ChatFormatter(
            template=template.decode("utf-8"),
            eos_token=eos,
            bos_token=bos,
            add_generation_prompt=True,
        )

    def _special_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self.piece(token, special=True).decode("utf-8", errors="replace")

    def render_chat(self, messages: Sequence[ChatMessage]) -> str:
        """The prompt text for ``messages`` per the GGUF's chat template, ending with the
        assistant generation prompt. Raises ``ValueError`` for malformed messages."""
        if not messages:
            raise ValueError("messages must not be empty")
        clean: list[Any] = []  # llama_cpp types these as TypedDicts; ours are validated here
        for i, m in enumerate(messages):
            role = m.get("role") if isinstance(m, Mapping) else None
            content = m.get("content") if isinstance(m, Mapping) else None
            if role not in ROLES or not isinstance(content, str):
                raise ValueError(
                    f"messages[{i}] must be {{'role': system|user|assistant, 'content': str}}, "
                    f"got {m!r}"
                )
            clean.append({"role": role, "content": content})
        try:
            prompt: str = self._formatter(messages=clean).prompt
        except jinja2.TemplateError as err:
            # e.g. a template that insists on alternating user/assistant turns
            raise ValueError(f"the model's chat template rejected the messages: {err}") from None
        return prompt

    def chat_tokens(self, messages: Sequence[ChatMessage]) -> list[int]:
        """Tokens of :meth:`render_chat`'s prompt (special tokens parsed)."""
        text = self.render_chat(messages)
        add_bos = bool(llama_cpp.llama_vocab_get_add_bos(self._vocab))
        if self._bos_text and text.startswith(self._bos_text):
            add_bos = False  # the template already wrote it
        return self.tokenize(text, add_special=add_bos)

    def tokenize(self, text: str, *, add_special: bool, parse_special: bool = True) -> list[int]:
        """Token ids of ``text``."""
        data = text.encode("utf-8")
        cap = len(data) + 8
        for _ in range(2):
            buf = (llama_cpp.llama_token * cap)()
            n = llama_cpp.llama_tokenize(
                self._vocab, data, len(data), buf, cap, add_special, parse_special
            )
            if n >= 0:
                return list(buf[:n])
            cap = -n  # buffer too small: llama.cpp returned minus the needed size
        raise RuntimeError(f"llama_tokenize failed for a text of {len(data)} bytes")

    def piece(self, token: int, *, special: bool = False) -> bytes:
        """The bytes of one token (may be part of a UTF-8 character)."""
        n = llama_cpp.llama_token_to_piece(
            self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special
        )
        if n < 0:
            self._piece_buf = ctypes.create_string_buffer(-n)
            n = llama_cpp.llama_token_to_piece(
                self._vocab, token, self._piece_buf, len(self._piece_buf), 0, special
            )
        return bytes(self._piece_buf.raw[:n])

    def is_eog(self, token: int) -> bool:
        """End of generation (EOS, end-of-turn, ...) per the GGUF vocabulary."""
        return bool(llama_cpp.llama_vocab_is_eog(self._vocab, token))

    def close(self) -> None:
        """Free the weights; contexts created from this model must be freed first."""
        if self._model is not None:
            llama_cpp.llama_model_free(self._model)
            self._model = None

    def __enter__(self) -> LlamaModel:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def new_context(
    model: LlamaModel,
    *,
    n_ctx: int,
    n_batch: int,
    n_seq_max: int,
    n_threads: int,
    kv_unified: bool,
    flash_attn: bool,
) -> Any:
    """A ``llama_context *`` for up to ``n_seq_max`` sequences with ``n_ctx`` KV cells in all:
    one pool shared by every sequence (``kv_unified``) or ``n_ctx / n_seq_max`` per sequence.
    Free it with ``llama_cpp.llama_free``."""
    params = llama_cpp.llama_context_default_params()
    params.n_ctx = n_ctx
    params.n_batch = n_batch
    params.n_ubatch = n_batch
    params.n_seq_max = n_seq_max
    # Pinned: the server shares its cores with STT and TTS engines.
    params.n_threads = n_threads
    params.n_threads_batch = n_threads
    # Unified: one pool, a long call may use more than n_ctx / n_seq_max cells. Split: each
    # sequence attends over its own cells only, which makes a call's output independent of
    # its batch neighbours (see docs/llama-batching.md for the measurement).
    params.kv_unified = kv_unified
    # Explicit rather than llama.cpp's "auto", so that CPU and GPU runs compute the same way.
    params.flash_attn_type = (
        llama_cpp.LLAMA_FLASH_ATTN_TYPE_ENABLED
        if flash_attn
        else llama_cpp.LLAMA_FLASH_ATTN_TYPE_DISABLED
    )
    params.no_perf = True
    ctx = llama_cpp.llama_init_from_model(model.handle, params)
    if not ctx:
        raise ModelLoadError(
            f"llama.cpp could not create a context (n_ctx={n_ctx}, n_batch={n_batch}, "
            f"n_seq_max={n_seq_max}) for {model.path}"
        )
    return ctx
