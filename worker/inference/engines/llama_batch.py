"""Continuous batching for llama.cpp: one ``llama_decode`` per step serves every active call.

:class:`BatchedLlama` drives llama.cpp's low-level API (``llama_batch`` with a ``seq_id`` per
token, ``n_seq_max`` sequences, one unified KV cache). Each :meth:`BatchedLlama.step` builds a
single batch holding one token for every decoding request plus a chunk of pending prompt
tokens of newly added requests (prefill is interleaved with decoding, so a long new prompt never
stalls the replies already streaming), decodes it once, and samples each request's next token
from its own logits row with its own sampler.

Per-call KV reuse: a call keeps its llama.cpp sequence between turns (see ``llama_kv``); the
next turn's prompt shares a prefix with it, so only the new suffix is prefilled. Idle calls are
evicted least-recently-used first when a new request needs cells or a sequence.

Threading: the engine is NOT thread-safe by design. Exactly one owner thread (the inference
server's LLM engine thread) calls it; the first thread that calls a method becomes the owner and
any other thread gets ``RuntimeError``. Everything is synchronous; ``step`` blocks for one
decode, so it must never run on an event loop.
"""

from __future__ import annotations

import threading
from collections.abc import Collection, Sequence
from dataclasses import dataclass
from enum import IntEnum
from typing import Any, Literal

import llama_cpp
import numpy as np

from worker.inference.engines.llama_batch_model import ChatMessage, LlamaModel, new_context
from worker.inference.engines.llama_kv import SequenceTable
from worker.inference.engines.llama_sampling import (
    SamplingParams,
    StopStringFilter,
    TokenSampler,
    Utf8Stream,
)

__all__ = [
    "BatchedLlama",
    "EngineCounters",
    "EngineFullError",
    "LlamaDecodeError",
    "SamplingParams",
    "StepOutput",
]

FinishReason = Literal["stop", "length"]


class EngineFullError(RuntimeError):
    """Every request slot (``n_seq_max``) is taken; the caller must refuse or retry later."""


class LlamaDecodeError(RuntimeError):
    """``llama_decode`` failed; the message carries llama.cpp's return code."""


class RequestState(IntEnum):
    WAITING = 0  # added, waiting for a sequence and KV cells
    PREFILL = 1  # prompt chunks are being decoded
    DECODE = 2  # one generated token per step


@dataclass(frozen=True)
class StepOutput:
    """What one request produced in one step."""

    seq_key: str
    call_id: str
    text: str
    """New text to emit (may be empty: held back as a partial character or stop-string prefix)."""
    token: int
    """The token sampled in this step (an end-of-generation token when it ended the reply)."""
    finished: bool
    finish_reason: FinishReason | None
    prompt_tokens: int
    completion_tokens: int
    reused_tokens: int
    """Prompt tokens whose KV was reused from the call's previous turn (not prefilled again)."""


@dataclass
class EngineCounters:
    """Monotonic counters of the engine's work (for metrics and tests)."""

    steps: int = 0
    prefill_tokens: int = 0
    decode_tokens: int = 0
    reused_tokens: int = 0
    copied_tokens: int = 0  # of reused_tokens: KV copied from another call's sequence
    evictions: int = 0


@dataclass(eq=False)
class _Request:
    seq_key: str
    call_id: str
    prompt: list[int]
    params: SamplingParams
    sampler: TokenSampler
    utf8: Utf8Stream
    stops: StopStringFilter
    state: RequestState = RequestState.WAITING
    seq_id: int = -1
    n_past: int = 0  # tokens of this sequence whose KV is in the cache
    reused: int = 0
    next_token: int = -1  # sampled, decoded in the next step
    completion_tokens: int = 0


class BatchedLlama:
    """Continuous-batching LLM engine over one llama.cpp context; one owner thread only."""

    def __init__(
        self,
        model: LlamaModel,
        *,
        n_ctx: int = 4096,
        n_batch: int = 512,
        n_seq_max: int = 8,
        n_threads: int = 2,
        kv_unified: bool = False,
        flash_attn: bool = True,
        share_prefixes: bool = False,
    ) -> None:
        """Create a context for ``model`` (the model is not owned: close it yourself).

        ``n_ctx`` KV cells in all; ``n_batch`` tokens at most per step; ``n_seq_max``
        concurrent requests (and cached calls); ``n_threads`` pinned for decode and prefill.
        ``kv_unified`` shares one cell pool between sequences; the default (False) gives each
        sequence ``n_ctx / n_seq_max`` cells and bit-identical outputs however requests are
        batched. ``flash_attn`` selects llama.cpp's flash-attention kernels. ``share_prefixes``
        lets a new request copy the KV of the longest prompt prefix another cached call holds
        (calls share a system prompt) instead of prefilling it again.
        """
        if n_seq_max < 1 or n_batch < n_seq_max or n_ctx < 16 or n_threads < 1:
            raise ValueError(
                f"need n_seq_max >= 1, n_batch >= n_seq_max, n_ctx >= 16, n_threads >= 1; got "
                f"n_seq_max={n_seq_max}, n_batch={n_batch}, n_ctx={n_ctx}, n_threads={n_threads}"
            )
        self._model = model
        if not kv_unified:
            # llama.cpp splits n_ctx evenly between the sequences (and warns if it cannot).
            n_ctx = max(n_seq_max, n_ctx - n_ctx % n_seq_max)
        self._ctx: Any = new_context(
            model,
            n_ctx=n_ctx,
            n_batch=n_batch,
            n_seq_max=n_seq_max,
            n_threads=n_threads,
            kv_unified=kv_unified,
            flash_attn=flash_attn,
        )
        self._mem: Any = llama_cpp.llama_get_memory(self._ctx)
        self._batch: Any = llama_cpp.llama_batch_init(n_batch, 0, 1)
        self.n_seq_max = n_seq_max
        self.n_batch = n_batch
        self.kv_unified = kv_unified
        # llama.cpp may round n_ctx up; the real cell counts are what the context reports.
        self.n_ctx: int = llama_cpp.llama_n_ctx(self._ctx)
        self.max_seq_tokens: int = (
            self.n_ctx if kv_unified else llama_cpp.llama_n_ctx_seq(self._ctx)
        )
        """Most tokens (prompt + max_tokens) one request may span."""
        self._table = SequenceTable(
            n_seq_max, self.max_seq_tokens, shared=kv_unified, share_prefixes=share_prefixes
        )
        self._requests: dict[str, _Request] = {}  # insertion order = arrival order
        self._by_call: dict[str, str] = {}  # call_id -> seq_key of its active request
        self._owner: int | None = None
        self._closed = False
        self._broken: str | None = None
        self.counters = EngineCounters()

    # -- public API ---------------------------------------------------------------------------

    def add(
        self,
        seq_key: str,
        call_id: str,
        messages: Sequence[ChatMessage],
        params: SamplingParams,
    ) -> None:
        """Queue a chat completion; its output arrives through :meth:`step`.

        Raises ``ValueError`` for malformed input (duplicate ``seq_key``, a call that already
        has an active request, bad messages, a prompt that cannot fit the context) and
        :class:`EngineFullError` when all ``n_seq_max`` request slots are taken.
        """
        self._check_usable()
        self.add_tokens(seq_key, call_id, self._model.chat_tokens(messages), params)

    def add_tokens(
        self, seq_key: str, call_id: str, prompt: Sequence[int], params: SamplingParams
    ) -> None:
        """Like :meth:`add` with an already tokenized prompt."""
        self._check_usable()
        if seq_key in self._requests:
            raise ValueError(f"request {seq_key!r} is already active")
        if call_id in self._by_call:
            raise ValueError(
                f"call {call_id!r} already has an active request "
                f"({self._by_call[call_id]!r}); cancel it first"
            )
        if not prompt:
            raise ValueError("empty prompt")
        bad = [t for t in prompt if not 0 <= t < self._model.n_vocab]
        if bad:
            raise ValueError(f"token ids out of vocabulary range: {bad[:5]}")
        if len(prompt) + params.max_tokens > self.max_seq_tokens:
            raise ValueError(
                f"prompt of {len(prompt)} tokens + max_tokens {params.max_tokens} exceeds the "
                f"context of {self.max_seq_tokens} tokens per sequence"
            )
        if self.free_slots() == 0:
            raise EngineFullError(f"all {self.n_seq_max} LLM sequences are busy")
        self._requests[seq_key] = _Request(
            seq_key=seq_key,
            call_id=call_id,
            prompt=list(prompt),
            params=params,
            sampler=TokenSampler(params),
            utf8=Utf8Stream(),
            stops=StopStringFilter(params.stop),
        )
        self._by_call[call_id] = seq_key

    def cancel(self, seq_key: str) -> bool:
        """Stop a request now: it emits nothing more, its slot is free, and the KV of its
        generated tokens is removed before the next step. The prompt's KV stays as the call's
        cache for its next turn (evictable like any idle call); :meth:`drop_call` frees all.
        Returns False if the request is unknown or already finished."""
        self._check_usable()
        req = self._requests.pop(seq_key, None)
        if req is None:
            return False
        del self._by_call[req.call_id]
        if req.state != RequestState.WAITING:
            keep = min(req.n_past, len(req.prompt))
            self._seq_rm(req.seq_id, keep, -1)
            self._table.release(req.call_id, keep=keep)
        return True

    def drop_call(self, call_id: str) -> None:
        """The call is over: cancel its request (if any) and free its whole sequence."""
        self._check_usable()
        seq_key = self._by_call.get(call_id)
        if seq_key is not None:
            self.cancel(seq_key)
        seq_id = self._table.drop(call_id)
        if seq_id is not None:
            self._seq_rm(seq_id, -1, -1)

    def step(
        self, max_prefill_tokens: int = 256, only: Collection[str] | None = None
    ) -> list[StepOutput]:
        """Run one ``llama_decode`` over every decoding request plus up to
        ``max_prefill_tokens`` pending prompt tokens; return what each request produced.

        ``only`` restricts the step to those request keys (the server's scheduler picks the
        batch); the others keep their state and continue in a later step.
        Returns an empty list when there is nothing to decode. Raises
        :class:`LlamaDecodeError` if llama.cpp fails; for return codes 1 and -1 the KV and
        every request are unchanged (the step may be retried after cancelling requests), for
        fatal ones the engine refuses further use.
        """
        self._check_usable()
        if max_prefill_tokens < 0:
            raise ValueError("max_prefill_tokens must be >= 0")
        self._admit_waiting()
        batch = self._batch
        n = 0
        sample_at: list[tuple[int, _Request]] = []
        decoded: list[tuple[_Request, int]] = []  # request, tokens it put in this batch

        def put(token: int, pos: int, seq_id: int, logits: bool) -> None:
            nonlocal n
            batch.token[n] = token
            batch.pos[n] = pos
            batch.n_seq_id[n] = 1
            batch.seq_id[n][0] = seq_id
            batch.logits[n] = 1 if logits else 0
            n += 1

        for req in self._requests.values():
            if only is not None and req.seq_key not in only:
                continue
            if req.state == RequestState.DECODE:
                put(req.next_token, req.n_past, req.seq_id, True)
                sample_at.append((n - 1, req))
                decoded.append((req, 1))
        budget = min(max_prefill_tokens, self.n_batch - n)
        for req in self._requests.values():
            if budget <= 0:
                break
            if req.state != RequestState.PREFILL:
                continue
            if only is not None and req.seq_key not in only:
                continue
            take = min(budget, len(req.prompt) - req.n_past)
            last = len(req.prompt) - 1
            for pos in range(req.n_past, req.n_past + take):
                put(req.prompt[pos], pos, req.seq_id, pos == last)
            if req.n_past + take == len(req.prompt):
                sample_at.append((n - 1, req))
            decoded.append((req, take))
            budget -= take
        if n == 0:
            return []
        batch.n_tokens = n
        self._decode()
        self.counters.steps += 1
        for req, count in decoded:
            if req.state == RequestState.DECODE:
                self._table.append(req.call_id, [req.next_token])
                self.counters.decode_tokens += 1
            else:
                self._table.append(req.call_id, req.prompt[req.n_past : req.n_past + count])
                self.counters.prefill_tokens += count
            req.n_past += count
        return [self._sample(i, req) for i, req in sample_at]

    def active(self) -> list[str]:
        """Keys of the requests not yet finished or cancelled, in arrival order."""
        return list(self._requests)

    def free_slots(self) -> int:
        """How many more requests :meth:`add` accepts now."""
        return self.n_seq_max - len(self._requests)

    def cached_tokens(self, call_id: str) -> int:
        """Tokens of ``call_id`` whose KV is cached (0 if the call has no sequence)."""
        entry = self._table.get(call_id)
        return len(entry.tokens) if entry is not None else 0

    def verify_kv(self) -> None:
        """Check that llama.cpp's KV holds exactly what the bookkeeping says: every call's
        sequence spans positions ``[0, cached_tokens)`` and every other sequence is empty.
        Raises ``RuntimeError`` on a mismatch (a leak)."""
        self._check_usable()
        expected = {e.seq_id: len(e.tokens) for e in self._table.sequences()}
        for seq_id in range(self.n_seq_max):
            count = expected.get(seq_id, 0)
            lo = llama_cpp.llama_memory_seq_pos_min(self._mem, seq_id)
            hi = llama_cpp.llama_memory_seq_pos_max(self._mem, seq_id)
            want = (0, count - 1) if count else (-1, -1)
            if (lo, hi) != want:
                raise RuntimeError(
                    f"KV of sequence {seq_id} spans positions {lo}..{hi}, "
                    f"bookkeeping expects {want[0]}..{want[1]}"
                )

    def close(self) -> None:
        """Free the context and batch (not the model). Idempotent."""
        if self._closed:
            return
        self._closed = True
        llama_cpp.llama_batch_free(self._batch)
        llama_cpp.llama_free(self._ctx)
        self._requests.clear()
        self._by_call.clear()

    def __enter__(self) -> BatchedLlama:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- internals ----------------------------------------------------------------------------

    def _check_usable(self) -> None:
        me = threading.get_ident()
        if self._owner is None:
            self._owner = me
        elif self._owner != me:
            raise RuntimeError("BatchedLlama is used from a second thread; it has one owner")
        if self._closed:
            raise RuntimeError("BatchedLlama is closed")
        if self._broken is not None:
            raise RuntimeError(f"BatchedLlama is unusable after a fatal error: {self._broken}")

    def _seq_rm(self, seq_id: int, p0: int, p1: int) -> None:
        if not llama_cpp.llama_memory_seq_rm(self._mem, seq_id, p0, p1):
            # Only recurrent models refuse partial removal; we cannot reuse their prefixes.
            self._broken = f"llama_memory_seq_rm({seq_id}, {p0}, {p1}) refused"
            raise RuntimeError(self._broken)

    def _copy_prefix(self, src: int, dst: int, n: int) -> None:
        """Make positions ``[0, n)`` of ``dst`` a copy of ``src``'s KV (same tokens)."""
        self._seq_rm(dst, -1, -1)
        if self.kv_unified:
            llama_cpp.llama_memory_seq_cp(self._mem, src, dst, 0, n)
        else:
            # With a pool per sequence llama.cpp copies only whole sequences between pools
            # (a partial copy aborts the process): copy all, then drop the tail.
            llama_cpp.llama_memory_seq_cp(self._mem, src, dst, -1, -1)
            self._seq_rm(dst, n, -1)
        self.counters.copied_tokens += n

    def _admit_waiting(self) -> None:
        """Give waiting requests (in arrival order) a sequence and cells if they fit."""
        for req in self._requests.values():
            if req.state != RequestState.WAITING:
                continue
            evictions = self._table.evictions
            plan = self._table.admit(req.call_id, req.prompt, req.params.max_tokens)
            if plan is None:
                break  # keep arrival order: a later request must not starve this one
            for seq_id in plan.evicted:
                self._seq_rm(seq_id, -1, -1)
            if plan.copy_from is not None:
                self._copy_prefix(plan.copy_from, plan.seq_id, plan.reused)
            else:
                self._seq_rm(plan.seq_id, plan.reused, -1)
            self.counters.evictions += self._table.evictions - evictions
            self.counters.reused_tokens += plan.reused
            req.seq_id = plan.seq_id
            req.n_past = plan.reused
            req.reused = plan.reused
            req.state = RequestState.PREFILL

    def _decode(self) -> None:
        rc = llama_cpp.llama_decode(self._ctx, self._batch)
        if rc == 0:
            return
        if rc in (1, -1):
            # llama.cpp restored the KV state: the engine is consistent, but this batch was
            # not decoded. 1 means no KV slot, which the cell reservations should prevent.
            raise LlamaDecodeError(f"llama_decode returned {rc} (batch of {self._batch.n_tokens})")
        # Aborted or fatal: part of the batch may be in the KV, which the bookkeeping does
        # not know about; refuse further use instead of generating from a corrupt cache.
        self._broken = f"llama_decode returned {rc}"
        raise LlamaDecodeError(self._broken)

    def _sample(self, index: int, req: _Request) -> StepOutput:
        ptr = llama_cpp.llama_get_logits_ith(self._ctx, index)
        if not ptr:
            raise LlamaDecodeError(f"no logits for batch index {index}")
        logits = np.ctypeslib.as_array(ptr, shape=(self._model.n_vocab,))
        token = req.sampler.sample(logits)
        req.state = RequestState.DECODE
        finish: FinishReason | None = None
        if self._model.is_eog(token):
            text = req.stops.push(req.utf8.finish()) + req.stops.flush()
            finish = "stop"
        else:
            req.completion_tokens += 1
            text = req.stops.push(req.utf8.push(self._model.piece(token)))
            if req.stops.stopped:
                finish = "stop"
            elif req.completion_tokens >= req.params.max_tokens:
                text += req.stops.push(req.utf8.finish()) + req.stops.flush()
                finish = "stop" if req.stops.stopped else "length"
            else:
                req.next_token = token
        if finish is not None:
            # The last sampled token is never decoded, so the cache holds exactly prompt +
            # every earlier generated token: the call's next turn can reuse all of it.
            del self._requests[req.seq_key]
            del self._by_call[req.call_id]
            self._table.release(req.call_id)
        return StepOutput(
            seq_key=req.seq_key,
            call_id=req.call_id,
            text=text,
            token=token,
            finished=finish is not None,
            finish_reason=finish,
            prompt_tokens=len(req.prompt),
            completion_tokens=req.completion_tokens,
            reused_tokens=req.reused,
        )
