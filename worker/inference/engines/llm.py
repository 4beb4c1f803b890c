"""Text generation with llama.cpp (llama-cpp-python). No asyncio here: an engine thread owns it.

Tokens are produced one ``Llama.generate`` step at a time so that a cancel flag is checked before
every step (a cancelled generation stops within one token) and usage is exact.
"""

from __future__ import annotations

import codecs
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

__all__ = [
    "ChatMessage",
    "Generation",
    "LlmEngine",
    "PromptTooLong",
    "SamplingParams",
    "StopMatcher",
]

FinishReason = Literal["stop", "length", "cancelled"]


@dataclass(frozen=True)
class ChatMessage:
    role: Literal["system", "user", "assistant"]
    content: str


@dataclass(frozen=True)
class SamplingParams:
    max_tokens: int = 128
    temperature: float = 0.7
    top_p: float = 0.95
    stop: tuple[str, ...] = ()
    seed: int | None = None


class PromptTooLong(ValueError):
    """The prompt does not fit in the context window."""


class StopMatcher:
    """Finds stop strings in streamed text, holding back any tail that may begin one."""

    def __init__(self, stops: Sequence[str]) -> None:
        self._stops = [s for s in stops if s]
        self._pending = ""

    def feed(self, text: str) -> tuple[str, bool]:
        """Add text; return ``(text safe to emit, stopped)``. After a stop, text from the stop
        string on is dropped."""
        self._pending += text
        cut = min((i for s in self._stops if (i := self._pending.find(s)) >= 0), default=-1)
        if cut >= 0:
            out, self._pending = self._pending[:cut], ""
            return out, True
        hold = 0
        for stop in self._stops:
            for n in range(min(len(stop) - 1, len(self._pending)), 0, -1):
                if self._pending.endswith(stop[:n]):
                    hold = max(hold, n)
                    break
        out = self._pending[: len(self._pending) - hold]
        self._pending = self._pending[len(self._pending) - hold :]
        return out, False

    def flush(self) -> str:
        """The held-back tail, when generation ended without a stop string."""
        out, self._pending = self._pending, ""
        return out


@dataclass
class Generation:
    """An iterator of text pieces; usage and finish reason are filled in as it runs."""

    prompt_tokens: int
    completion_tokens: int = 0
    finish_reason: FinishReason | None = None
    _pieces: Iterator[str] = field(default_factory=lambda: iter(()))

    def __iter__(self) -> Iterator[str]:
        return self._pieces


class LlmEngine:
    """A GGUF model held by one thread; prompts use the GGUF's own chat template."""

    def __init__(
        self,
        gguf: Path,
        *,
        device: Literal["cpu", "cuda"],
        threads: int,
        n_ctx: int,
        n_batch: int,
    ) -> None:
        import llama_cpp
        from llama_cpp import Llama
        from llama_cpp.llama_chat_format import Jinja2ChatFormatter

        self._llama_cpp = llama_cpp
        self._llm = Llama(
            model_path=str(gguf),
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_threads=threads,
            n_threads_batch=threads,
            n_gpu_layers=-1 if device == "cuda" else 0,
            verbose=False,
        )
        template = self._llm.metadata.get("tokenizer.chat_template")
        if not template:
            raise ValueError(f"{gguf}: GGUF has no tokenizer.chat_template")
        eos_id, bos_id = self._llm.token_eos(), self._llm.token_bos()
        self._formatter = Jinja2ChatFormatter(
            template=template,
            eos_token=self._token_text(eos_id),
            bos_token=self._token_text(bos_id),
            add_generation_prompt=True,
        )
        self.n_ctx = n_ctx

    def _token_text(self, token: int) -> str:
        if token < 0:
            return ""
        return self._llm.detokenize([token], special=True).decode("utf-8", errors="replace")

    def count_prompt_tokens(self, messages: Sequence[ChatMessage]) -> int:
        return len(self._prompt(messages)[0])

    def _prompt(self, messages: Sequence[ChatMessage]) -> tuple[list[int], list[str]]:
        chat: Any = [{"role": m.role, "content": m.content} for m in messages]
        rendered = self._formatter(messages=chat)
        stops: list[str] = []
        if isinstance(rendered.stop, str):
            stops.append(rendered.stop)
        elif rendered.stop:
            stops.extend(rendered.stop)
        added_special = bool(getattr(rendered, "added_special", False))
        tokens = self._llm.tokenize(
            rendered.prompt.encode("utf-8"), add_bos=not added_special, special=True
        )
        return tokens, stops

    def generate(
        self,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
        should_stop: Callable[[], bool],
    ) -> Generation:
        """Start a generation. Iterate the result for text pieces; ``should_stop`` is checked
        before every token step. Raises :class:`PromptTooLong` if the prompt does not fit."""
        tokens, template_stops = self._prompt(messages)
        if len(tokens) >= self.n_ctx:
            raise PromptTooLong(
                f"prompt is {len(tokens)} tokens; the context window is {self.n_ctx}"
            )
        gen = Generation(prompt_tokens=len(tokens))
        budget = min(params.max_tokens, self.n_ctx - len(tokens))
        gen._pieces = self._run(tokens, template_stops, params, budget, should_stop, gen)
        return gen

    def _run(
        self,
        prompt: list[int],
        template_stops: list[str],
        params: SamplingParams,
        budget: int,
        should_stop: Callable[[], bool],
        gen: Generation,
    ) -> Iterator[str]:
        llm = self._llm
        # Always set it: the seed is sticky on the Llama object, and a request without one must
        # not inherit the previous request's (LLAMA_DEFAULT_SEED lets llama.cpp pick at random).
        llm.set_seed(params.seed if params.seed is not None else self._llama_cpp.LLAMA_DEFAULT_SEED)
        matcher = StopMatcher([*params.stop, *template_stops])
        decoder = codecs.getincrementaldecoder("utf-8")(errors="replace")
        history = list(prompt)
        steps: Any = llm.generate(prompt, temp=params.temperature, top_p=params.top_p, reset=True)
        try:
            while True:
                if should_stop():
                    gen.finish_reason = "cancelled"
                    return
                if gen.completion_tokens >= budget:
                    gen.finish_reason = "length"
                    break
                token = next(steps)  # one decode step
                gen.completion_tokens += 1
                if self._is_eog(token):
                    gen.finish_reason = "stop"
                    break
                piece = decoder.decode(llm.detokenize([token], prev_tokens=history))
                history.append(token)
                text, stopped = matcher.feed(piece)
                if text:
                    yield text
                if stopped:
                    gen.finish_reason = "stop"
                    return
            tail = matcher.flush() + decoder.decode(b"", final=True)
            if tail:
                yield tail
        finally:
            steps.close()

    def _is_eog(self, token: int) -> bool:
        # End of generation (EOS, <|im_end|>, ...) as the vocabulary defines it; the same check
        # llama-cpp-python's own completion loop uses.
        return bool(self._llama_cpp.llama_vocab_is_eog(self._llm._model.vocab, token))
