"""Prometheus metrics of one inference server, in a private registry (several servers may live in
one process during tests, and no global state is shared)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest

from worker.inference.runtime import WorkState

__all__ = ["InferenceMetrics"]

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
        for op in ("stt", "llm", "tts"):
            self.active_streams.labels(op).set(0)
            self.queue_depth_gauge.labels(op).set(0)

    # RunnerObserver
    def queue_depth(self, engine: str, depth: int) -> None:
        self.queue_depth_gauge.labels(engine).set(depth)

    def work_done(self, engine: str, state: WorkState, wait_s: float, run_s: float) -> None:
        self.work_items.labels(engine, state.name.lower()).inc()
        self.queue_wait.labels(engine).observe(wait_s)
        if state != WorkState.CANCELLED or run_s > 0:
            self.engine_step.labels(engine).observe(run_s)

    def render(self) -> bytes:
        """The registry in Prometheus text format."""
        data: bytes = generate_latest(self.registry)
        return data
