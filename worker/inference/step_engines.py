"""The batched engines as the scheduled owner threads drive them (``scheduler.mode: deadline``).

Each adapter turns one scheduler batch into one engine step and reports one
:class:`~worker.inference.scheduler.StepOutput` per request:

- :class:`WhisperStep`: every utterance of the batch in one ``BatchedWhisper.run_batch``
  (short encoder windows, greedy; word timings for the jobs that ask); a request is done after
  its step.
- :class:`LlamaStep`: continuous batching on ``BatchedLlama``: new requests are added (their
  prompt is prefilled in chunks), every step is one ``llama_decode`` for exactly the batch's
  requests; the first clause end moves a request to ``llm_rest`` with the playout of its text
  as slack; ``release`` cancels the sequence before the next step.
- :class:`PiperStep`: Piper clause by clause. Piper's ONNX graph has a batch axis, but on this
  CPU a padded batch costs about the sum of its items, so the config keeps ``tts.max_batch: 1``
  and the scheduler interleaves clauses of different calls, first clauses first. A larger
  configured batch runs its items one after the other in the step.

All methods run on the engine's owner thread only.
"""

from __future__ import annotations

import re
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from worker.inference.engines.llama_batch import BatchedLlama
from worker.inference.engines.llama_batch import SamplingParams as BatchSampling
from worker.inference.engines.stt import pcm16_to_float32
from worker.inference.engines.tts import TtsEngine
from worker.inference.engines.whisper_batch import BatchedWhisper
from worker.inference.jobs import LlmResult, SttJob, SttResult, SttWords, TtsAudio
from worker.inference.scheduled import StepItem
from worker.inference.scheduler import DeadlineConfig, Stage, StepOutput

__all__ = ["LlamaStep", "PiperStep", "WhisperStep", "estimate_prompt_tokens"]

_CLAUSE_END = re.compile(r"[.!?;:,]\s*$|\n")


def estimate_prompt_tokens(chars: int) -> float:
    """Rough token count of a prompt before tokenization (the first step's cost units)."""
    return max(1.0, chars / 4.0)


class WhisperStep:
    """STT: one ``run_batch`` per step (payloads: :class:`~worker.inference.jobs.SttJob`;
    results: the text, or :class:`~worker.inference.jobs.SttWords` for a job with ``words``)."""

    def __init__(self, engine: BatchedWhisper) -> None:
        self.engine = engine
        self._results: dict[str, SttResult] = {}

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        jobs: list[SttJob] = [it.work.payload for it in items]
        audios = [pcm16_to_float32(job.pcm) for job in jobs]
        result = self.engine.run_batch(audios, words=[job.words for job in jobs])
        outs = []
        for it, job, t in zip(items, jobs, result.transcripts, strict=True):
            self._results[it.rid] = SttWords(t.text, t.words) if job.words else t.text
            outs.append(StepOutput(it.rid, done=True))
        return outs

    def result(self, rid: str) -> Any:
        return self._results.get(rid)

    def release(self, rid: str) -> None:
        self._results.pop(rid, None)


@dataclass
class _LlmState:
    engine_call: str
    text_chars: int = 0
    first_clause_done: bool = False
    outcome: LlmResult | None = None


class LlamaStep:
    """LLM: continuous batching; payloads are :class:`~worker.inference.jobs.LlmJob`."""

    def __init__(
        self,
        engine: BatchedLlama,
        deadlines: DeadlineConfig,
        max_prefill_tokens: int,
        on_tokens: Callable[[int], None] | None = None,
    ) -> None:
        self.engine = engine
        self._on_tokens = on_tokens
        self._deadlines = deadlines
        self._max_prefill = max_prefill_tokens
        self._state: dict[str, _LlmState] = {}
        self._busy_calls: set[str] = set()  # engine call ids with an active request

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        errors: dict[str, str] = {}
        for it in items:
            if it.rid in self._state:
                continue
            job = it.work.payload
            p = job.params
            call = it.request.call_id
            if call in self._busy_calls:
                # A second concurrent request of one call (the protocol allows it) gets a
                # sequence of its own, freed when it ends; only the call's main one keeps KV.
                call = f"{call}\x00{it.rid}"
            try:
                self.engine.add(
                    it.rid,
                    call,
                    [{"role": m.role, "content": m.content} for m in job.messages],
                    BatchSampling(
                        max_tokens=p.max_tokens,
                        temperature=p.temperature,
                        top_p=p.top_p,
                        stop=tuple(p.stop),
                        seed=p.seed,
                    ),
                )
            except (ValueError, RuntimeError) as err:
                errors[it.rid] = str(err)
                continue
            self._state[it.rid] = _LlmState(engine_call=call)
            self._busy_calls.add(call)
        keys = [it.rid for it in items if it.rid not in errors]
        produced = {o.seq_key: o for o in self.engine.step(self._max_prefill, only=keys)}
        outs: list[StepOutput] = []
        for it in items:
            if it.rid in errors:
                outs.append(StepOutput(it.rid, error=errors[it.rid]))
                continue
            st = self._state[it.rid]
            o = produced.get(it.rid)
            if o is None:  # still prefilling: its next step is more prompt
                outs.append(StepOutput(it.rid))
                continue
            if self._on_tokens is not None:
                self._on_tokens(1)
            if o.text:
                it.work._post_partial(o.text)
                st.text_chars += len(o.text)
            st.outcome = LlmResult(o.finish_reason or "stop", o.prompt_tokens, o.completion_tokens)
            if o.finished:
                outs.append(StepOutput(it.rid, done=True))
            elif (
                not st.first_clause_done
                and it.request.stage is Stage.LLM_FIRST_CLAUSE
                and _CLAUSE_END.search(o.text)
            ):
                # The first clause can be spoken: the rest has the playout of the text so far.
                st.first_clause_done = True
                slack = self._deadlines.playout_of_text_s(st.text_chars)
                outs.append(StepOutput(it.rid, units=1.0, next_stage=Stage.LLM_REST, slack_s=slack))
            else:
                outs.append(StepOutput(it.rid, units=1.0))
        return outs

    def result(self, rid: str) -> Any:
        st = self._state.get(rid)
        return st.outcome if st is not None else None

    def release(self, rid: str) -> None:
        st = self._state.pop(rid, None)
        if st is None:
            return
        self.engine.cancel(rid)  # no-op for a finished request; frees a running one
        self._busy_calls.discard(st.engine_call)
        if "\x00" in st.engine_call:
            self.engine.drop_call(st.engine_call)  # a side sequence: nobody reuses its KV


class PiperStep:
    """TTS: Piper clause by clause; payloads are :class:`~worker.inference.jobs.TtsJob`."""

    def __init__(self, engine: TtsEngine) -> None:
        self.engine = engine
        self._results: dict[str, Any] = {}

    def step(self, items: Sequence[StepItem[Any, Any]]) -> list[StepOutput]:
        """One item: ``synthesize``. Several (the scheduler batches only where the cost model
        says it pays): one ``synthesize_batch`` per speed, since the graph takes one
        length scale per run."""
        if len(items) == 1:
            job = items[0].work.payload
            samples = [self.engine.synthesize(job.text, speed=job.speed)]
            self._keep(items, samples)
            return [StepOutput(items[0].rid, done=True)]
        by_speed: dict[float, list[StepItem[Any, Any]]] = {}
        for it in items:
            by_speed.setdefault(it.work.payload.speed, []).append(it)
        for speed, group in by_speed.items():
            texts = [it.work.payload.text for it in group]
            self._keep(group, self.engine.synthesize_batch(texts, speed=speed))
        return [StepOutput(it.rid, done=True) for it in items]

    def _keep(self, items: Sequence[StepItem[Any, Any]], samples: Sequence[Any]) -> None:
        for it, audio in zip(items, samples, strict=True):
            self._results[it.rid] = TtsAudio(audio, self.engine.sample_rate)

    def result(self, rid: str) -> Any:
        return self._results.get(rid)

    def release(self, rid: str) -> None:
        self._results.pop(rid, None)
