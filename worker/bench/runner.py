"""The benchmark run: for each scheduling mode start a server, sweep N, stop the server.

Both modes replay the same seeded call plans at each N on the same machine in one invocation,
so their ratio holds even when the machine is noisy.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import platform
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from datetime import UTC, datetime
from pathlib import Path

from worker.bench.call import CallSettings
from worker.bench.capacity import SweepPlan, capacity, next_point
from worker.bench.loadgen import run_point, wait_idle
from worker.bench.report import BenchResult
from worker.bench.results import ModeResult, Outcome, PointResult
from worker.bench.server_proc import InferenceServerProcess, write_mode_config
from worker.bench.timeline import make_call_plans
from worker.bench.utterances import Utterance, load_or_synthesize

__all__ = ["BenchError", "BenchOptions", "run_bench"]

log = logging.getLogger(__name__)

MODES: tuple[str, ...] = ("deadline", "serial")


class BenchError(RuntimeError):
    """The benchmark could not measure (e.g. the server fails every request)."""


@dataclass(frozen=True)
class BenchOptions:
    """Everything one ``voicestack bench inference`` invocation needs."""

    config: Path = Path("config/inference.yaml")
    modes: tuple[str, ...] = MODES
    ladder: tuple[int, ...] = (1, 2, 4, 8, 16)
    report_n: tuple[int, ...] = (1, 4, 8)
    refine: bool = True
    max_points: int = 8
    """Per mode, refinement included."""
    turns_per_call: int = 3
    point_s: float = 40.0
    """No turn starts later than this after a point began."""
    stagger_s: float = 3.0
    seed: int = 0
    limit_ms: float = 600.0
    warmup: bool = True
    interleave: bool = True
    """Keep every mode's server up and alternate modes point by point (else one after the
    other, one server at a time)."""
    max_tokens: int = 40
    temperature: float = 0.7
    interim: bool = True
    turn_timeout_s: float = 60.0
    startup_timeout_s: float = 180.0
    out_dir: Path = Path("out/bench")
    cache_dir: Path = Path(".run/bench")

    def __post_init__(self) -> None:
        unknown = [m for m in self.modes if m not in MODES]
        if unknown:
            raise ValueError(f"unknown scheduling mode(s) {unknown}; choose from {list(MODES)}")
        if self.turns_per_call < 1 or self.point_s <= 0 or self.max_points < 1:
            raise ValueError("turns, point duration and max points must be positive")

    def params(self) -> dict[str, object]:
        """The parameters as plain JSON."""
        return {k: (str(v) if isinstance(v, Path) else v) for k, v in asdict(self).items()}


class _ModeSweep:
    """One mode's server and sweep state; :meth:`step` measures the next point."""

    def __init__(
        self,
        mode: str,
        opts: BenchOptions,
        utterances: Sequence[Utterance],
        server: InferenceServerProcess,
    ) -> None:
        self.mode = mode
        self.opts = opts
        self.utterances = utterances
        self.server = server
        self.result = ModeResult(mode=mode, server_log=str(server.log_path))
        self.plan = SweepPlan.build(opts.ladder, opts.report_n, opts.refine)
        self.verdicts: dict[int, bool] = {}
        self.settings = CallSettings(
            url=server.stream_url,
            max_tokens=opts.max_tokens,
            temperature=opts.temperature,
            interim=opts.interim,
            turn_timeout_s=opts.turn_timeout_s,
        )

    async def warm_up(self) -> None:
        """One discarded turn: the first requests pay one-time costs (allocations, caches)."""
        warm = await _point(
            self.mode, 1, 1, 0.0, self.opts, self.settings, self.utterances, prefix="warmup"
        )
        if warm.completed == 0:
            raise BenchError(f"[{self.mode}] the warm-up turn failed: {_first_error(warm)}")

    async def step(self) -> bool:
        """Measure the next point of the sweep; ``False`` once the sweep is complete."""
        if len(self.result.points) >= self.opts.max_points:
            return False
        n = next_point(self.plan, self.verdicts)
        if n is None:
            return False
        mode, opts = self.mode, self.opts
        point = await _point(
            mode, n, opts.turns_per_call, opts.stagger_s, opts, self.settings, self.utterances
        )
        point.server_idle_after = await wait_idle(self.server.base_url)
        point.host_load_1m = round(os.getloadavg()[0], 2)
        self.verdicts[n] = point.passed
        self.result.points.append(point)
        self.result.capacity = capacity(self.verdicts)
        c = point.stage("compute")
        log.info(
            "[%s] N=%d: %s; %d ok, %d refused, %d errors; compute p50 %s p95 %s ms; "
            "%.2f turns/s; load %.2f",
            mode, n, "pass" if point.passed else "FAIL", point.completed, point.refused,
            point.errors, _f(c.p50), _f(c.p95), point.throughput_tps, point.host_load_1m,
        )  # fmt: skip
        if point.errors:
            log.warning("[%s] N=%d first error: %s", mode, n, _first_error(point))
        return True


async def _start_sweep(
    stack: contextlib.AsyncExitStack,
    mode: str,
    opts: BenchOptions,
    utterances: Sequence[Utterance],
    run_dir: Path,
) -> _ModeSweep:
    config = write_mode_config(opts.config, mode, run_dir / f"inference-{mode}.yaml")
    server = InferenceServerProcess(
        config, run_dir / f"server-{mode}.log", startup_timeout_s=opts.startup_timeout_s
    )
    await stack.enter_async_context(server)
    log.info("[%s] server ready on %s", mode, server.base_url)
    sweep = _ModeSweep(mode, opts, utterances, server)
    if opts.warmup:
        await sweep.warm_up()
    return sweep


async def _point(
    mode: str,
    n: int,
    turns: int,
    stagger_s: float,
    opts: BenchOptions,
    settings: CallSettings,
    utterances: Sequence[Utterance],
    prefix: str = "bench",
) -> PointResult:
    plans = make_call_plans(
        n, turns_per_call=turns, n_utterances=len(utterances), seed=opts.seed, stagger_s=stagger_s
    )
    return await run_point(
        mode=mode,
        plans=plans,
        utterances=utterances,
        settings=settings,
        max_duration_s=opts.point_s,
        limit_ms=opts.limit_ms,
        call_prefix=f"{prefix}-{mode}-n{n}",
    )


def _f(x: float | None) -> str:
    return "-" if x is None else f"{x:.0f}"


def _first_error(point: PointResult) -> str:
    for t in point.turns:
        if t.outcome is not Outcome.OK:
            return f"{t.outcome.value} at {t.failed_stage}: {t.error_code}: {t.error_message}"
    return "no turn ran"


def machine_info() -> dict[str, object]:
    """What the numbers were measured on."""
    return {
        "platform": platform.platform(),
        "processor": platform.processor() or platform.machine(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "load_avg_at_start": [round(x, 2) for x in os.getloadavg()],
    }


async def _run_modes(
    opts: BenchOptions, utterances: Sequence[Utterance], result: BenchResult, run_dir: Path
) -> None:
    if not opts.interleave:
        for mode in opts.modes:
            async with contextlib.AsyncExitStack() as stack:
                sweep = await _start_sweep(stack, mode, opts, utterances, run_dir)
                result.modes[mode] = sweep.result
                while await sweep.step():
                    pass
        return
    # Interleaved: every mode's server stays up (idle ones use no CPU) and the modes take
    # turns point by point, so slow drifts in the machine's background load hit both alike.
    async with contextlib.AsyncExitStack() as stack:
        sweeps = []
        for mode in opts.modes:
            sweep = await _start_sweep(stack, mode, opts, utterances, run_dir)
            result.modes[mode] = sweep.result
            sweeps.append(sweep)
        while sweeps:
            sweeps = [sweep for sweep in sweeps if await sweep.step()]


def run_bench(opts: BenchOptions, voice_onnx: Path) -> tuple[BenchResult, str]:
    """Run every mode back to back; returns the result and the run's timestamp.

    Caller audio is synthesized (or read from the cache) before the event loop starts.
    """
    utterances = load_or_synthesize(opts.cache_dir / "utterances", voice_onnx)
    now = datetime.now(UTC)
    stamp = now.strftime("%Y%m%dT%H%M%SZ")
    run_dir = opts.cache_dir / stamp
    result = BenchResult(
        started_at=now.isoformat(timespec="seconds"),
        params=opts.params(),
        report_n=opts.report_n,
        limit_ms=opts.limit_ms,
        machine=machine_info(),
    )
    result.params["utterances"] = [
        {"text": u.text, "duration_s": round(u.duration_s, 3)} for u in utterances
    ]
    asyncio.run(_run_modes(opts, utterances, result, run_dir))
    return result, stamp
