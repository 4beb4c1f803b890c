"""Prometheus metrics of one inference server, in a private registry (several servers may live in
one process during tests, and no global state is shared)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.inference.runtime import WorkState
from worker.inference.scheduler import EngineStats

__all__ = ["InferenceMetrics"]

_BATCH_BUCKETS = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 64)
_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.2, 0.3, 0.5, 0.75, 1.0, 2.0, 5.0, 10.0)


class InferenceMetrics:
    """All metrics of the server; implements the runner observer hooks."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "voicestack_inference_requests",
            "streams by op and outcome",
            ["op", "outcome"],
            registry=r,
        )
        self.active_streams = Gauge(
            "voicestack_inference_active_streams", "open streams", ["op"], registry=r
        )
        self.queue_depth_gauge = Gauge(
            "voicestack_inference_queue_depth",
            "work items waiting per engine",
            ["engine"],
            registry=r,
        )
        self.work_items = Counter(
            "voicestack_inference_work_items",
            "engine work items by final state",
            ["engine", "state"],
            registry=r,
        )
        self.queue_wait = Histogram(
            "voicestack_inference_queue_wait_seconds",
            "time a work item waited for its engine",
            ["engine"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.engine_step = Histogram(
            "voicestack_inference_engine_step_seconds",
            "engine compute time per work item",
            ["engine"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.stage_latency = Histogram(
            "voicestack_inference_stage_latency_seconds",
            "per-stage latency: stt_final (flush to final), llm_first_token (start to first "
            "token), tts_first_audio (clause complete to its first audio frame)",
            ["stage"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.llm_tokens = Counter(
            "voicestack_inference_llm_tokens",
            "completion tokens produced by the LLM engine",
            registry=r,
        )
        self.stt_audio_dropped = Counter(
            "voicestack_inference_stt_audio_dropped_seconds",
            "oldest unflushed STT audio dropped to keep an utterance within max_utterance_s "
            "(a caller silent or on hold without a flush)",
            registry=r,
        )
        # -- scheduler (mode: deadline); fed from EngineStats snapshots -----------------------
        self.batch_size = Histogram(
            "voicestack_inference_batch_size",
            "requests per engine step",
            ["engine"],
            buckets=_BATCH_BUCKETS,
            registry=r,
        )
        self.batch_step = Histogram(
            "voicestack_inference_batch_step_seconds",
            "wall time of one engine step (a whole batch)",
            ["engine"],
            buckets=_LATENCY_BUCKETS,
            registry=r,
        )
        self.active_slots = Gauge(
            "voicestack_inference_active_slots",
            "requests holding an engine slot (running or streaming, e.g. LLM sequences)",
            ["engine"],
            registry=r,
        )
        self.deadline_misses = Counter(
            "voicestack_inference_deadline_misses",
            "stages completed after their deadline",
            ["engine", "stage"],
            registry=r,
        )
        self.queue_refusals = Counter(
            "voicestack_inference_queue_refusals",
            "requests refused because a bounded scheduler queue was full",
            ["engine"],
            registry=r,
        )
        self.capacity_units = Gauge(
            "voicestack_inference_capacity_units_per_second",
            "learned engine capacity at its best batch size (audio s / tokens / chars per s)",
            ["engine"],
            registry=r,
        )
        self.work_units = Gauge(
            "voicestack_inference_work_units_per_second",
            "work the engine ran per second (decayed average)",
            ["engine"],
            registry=r,
        )
        self.calls = Counter(
            "voicestack_inference_calls",
            "call admission decisions",
            ["decision"],
            registry=r,
        )
        self.active_calls = Gauge(
            "voicestack_inference_active_calls", "admitted calls with an open stream", registry=r
        )
        self.load = Gauge(
            "voicestack_inference_load",
            "estimated load in 0..1 (what /v1/capacity reports)",
            registry=r,
        )
        self._seen: dict[str, EngineStats] = {}
        for op in ("stt", "llm", "tts"):
            self.active_streams.labels(op).set(0)
            self.queue_depth_gauge.labels(op).set(0)
            self.active_slots.labels(op).set(0)

    # RunnerObserver
    def queue_depth(self, engine: str, depth: int) -> None:
        self.queue_depth_gauge.labels(engine).set(depth)

    def work_done(self, engine: str, state: WorkState, wait_s: float, run_s: float) -> None:
        self.work_items.labels(engine, state.name.lower()).inc()
        self.queue_wait.labels(engine).observe(wait_s)
        if state != WorkState.CANCELLED or run_s > 0:
            self.engine_step.labels(engine).observe(run_s)

    def engine_stats(self, stats: EngineStats) -> None:
        """Fold a scheduler snapshot in (event loop; snapshots are cumulative)."""
        engine = str(stats.engine)
        prev = self._seen.get(engine)
        if prev is not None and stats.at < prev.at:
            return  # an older snapshot arrived late
        self._seen[engine] = stats
        if prev is None or stats.steps > prev.steps:
            # One snapshot follows every step, so the last batch is that step's.
            self.batch_size.labels(engine).observe(stats.last_batch_size)
            self.batch_step.labels(engine).observe(stats.last_step_s)
        self.queue_depth_gauge.labels(engine).set(stats.waiting)
        self.active_slots.labels(engine).set(stats.active)
        self.capacity_units.labels(engine).set(stats.capacity_units_per_s)
        self.work_units.labels(engine).set(stats.work_units_per_s)
        before = dict(prev.misses_by_stage) if prev is not None else {}
        for stage, n in stats.misses_by_stage:
            if n > before.get(stage, 0):
                self.deadline_misses.labels(engine, str(stage)).inc(n - before.get(stage, 0))
        refused = stats.refused - (prev.refused if prev is not None else 0)
        if refused > 0:
            self.queue_refusals.labels(engine).inc(refused)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        data: bytes = generate_latest(self.registry)
        return data
