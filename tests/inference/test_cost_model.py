"""The online cost model on synthetic step times, alone and driving a scheduler."""

from __future__ import annotations

import random
from collections.abc import Callable

import pytest

from worker.inference.scheduler import (
    CostModel,
    CostModelConfig,
    Engine,
    Request,
    Scheduler,
    SchedulerConfig,
    Stage,
    StepOutput,
)

StepTime = Callable[[int, float], float]


def cpu_like(b: int, units: float) -> float:
    """Piper on CPU: every item costs the same, batched or not (plus a tiny overhead)."""
    return 0.001 + 0.020 * b + 0.0005 * units


def gpu_like(b: int, units: float) -> float:
    """A GPU: the step costs about the same for 1 or 32 items."""
    return 0.030 + 0.0005 * b + 0.0001 * units


def knee(b: int, units: float) -> float:
    """Flat up to 8 items, then every further item costs a full step's worth."""
    return 0.020 + 0.0005 * b if b <= 8 else 0.024 + 0.020 * (b - 8)


def train(model: CostModel, truth: StepTime, n: int, seed: int, noise: float = 0.05) -> None:
    rng = random.Random(seed)
    for _ in range(n):
        b = rng.randint(1, model.max_batch)
        units = sum(rng.uniform(5, 15) for _ in range(b))
        model.observe(b, units, truth(b, units) * rng.uniform(1 - noise, 1 + noise))


@pytest.mark.parametrize("truth", [cpu_like, gpu_like, knee])
def test_converges_on_synthetic_step_times(truth: StepTime) -> None:
    model = CostModel(CostModelConfig(), max_batch=16)
    train(model, truth, 400, seed=1)
    for b in (1, 2, 4, 8, 16):
        units = 10.0 * b
        assert model.predict(b, units) == pytest.approx(truth(b, units), rel=0.10), b


def slower_batched(b: int, units: float) -> float:
    """Piper on CPU as measured: a batch is slower than its items one after another."""
    return 0.020 * b**1.2 + 0.0005 * units


@pytest.mark.parametrize("truth", [cpu_like, slower_batched])
def test_cpu_like_engine_learns_batching_does_not_pay(truth: StepTime) -> None:
    # The default prior is optimistic (it believes in batching) and the data must overturn it.
    model = CostModel(CostModelConfig(), max_batch=8)
    assert model.batching_pays(4)
    train(model, truth, 200, seed=2)
    assert not any(model.batching_pays(b) for b in range(2, 9))
    assert model.best_batch(8) == 1


def test_gpu_like_engine_learns_batching_pays() -> None:
    # A pessimistic prior (each item costs 20 ms) must give way to the measured flat steps.
    prior = CostModelConfig(prior_fixed_s=0.0, prior_per_item_s=0.020)
    model = CostModel(prior, max_batch=32)
    assert model.best_batch(32) == 1
    train(model, gpu_like, 300, seed=3)
    assert model.best_batch(32) == 32
    assert model.capacity_units_per_s(32) > 5 * model.capacity_units_per_s(1)


def test_knee_is_found_from_per_size_measurements() -> None:
    model = CostModel(CostModelConfig(), max_batch=16)
    train(model, knee, 600, seed=4)
    assert model.best_batch(16) == 8


def test_units_slope_is_learned() -> None:
    model = CostModel(CostModelConfig(), max_batch=1)
    rng = random.Random(5)
    for _ in range(200):
        u = rng.uniform(0.5, 10.0)  # e.g. seconds of audio to transcribe
        model.observe(1, u, 0.004 + 0.010 * u)
    assert model.coefficients[2] == pytest.approx(0.010, rel=0.05)
    assert model.predict(1, 3.0) == pytest.approx(0.034, rel=0.05)


def test_forgetting_follows_an_engine_that_slows_down() -> None:
    model = CostModel(CostModelConfig(), max_batch=4)
    train(model, cpu_like, 200, seed=6, noise=0.0)
    train(model, lambda b, u: 2 * cpu_like(b, u), 100, seed=7, noise=0.0)
    assert model.predict(2, 20.0) == pytest.approx(2 * cpu_like(2, 20.0), rel=0.05)


def test_bad_measurements_are_refused() -> None:
    model = CostModel(max_batch=4)
    for args in [(0, 1.0, 0.1), (5, 1.0, 0.1), (1, -1.0, 0.1), (1, 1.0, float("nan"))]:
        with pytest.raises(ValueError):
            model.observe(*args)
    assert model.observations == 0
    with pytest.raises(ValueError):
        CostModel(max_batch=0)


def drive(truth: StepTime, prior: CostModelConfig, steps: int) -> list[int]:
    """A saturated engine on virtual time: the scheduler learns from what it measures."""
    config = SchedulerConfig(max_batch=16, max_waiting=64, explore_every=8, cost_model=prior)
    sched = Scheduler(Engine.STT, config)
    now, sizes, n = 0.0, [], 0
    for _ in range(steps):
        while sched.num_waiting < 32:  # interims of 32 streams, due within half a second
            n += 1
            r = Request(f"r{n}", f"c{n % 32}", Stage.STT_INTERIM, now, now + 0.5, 3.0, f"s{n}")
            sched.add_request(r, now)
        batch = sched.schedule(now)
        step_s = truth(batch.size, batch.units)
        now += step_s
        outs = [StepOutput(r.request_id, done=True) for r in batch.requests]
        sched.update_from_output(batch, outs, step_s, now)
        sizes.append(batch.size)
    return sizes


def test_scheduler_learns_to_batch_on_a_gpu_like_engine_from_a_pessimistic_prior() -> None:
    sizes = drive(gpu_like, CostModelConfig(prior_fixed_s=0.0, prior_per_item_s=0.05), 200)
    assert sizes[0] == 1
    assert all(size == 16 for i, size in enumerate(sizes) if i >= 100 and i % 8 != 7)


def test_scheduler_learns_not_to_batch_on_a_cpu_like_engine_from_an_optimistic_prior() -> None:
    sizes = drive(cpu_like, CostModelConfig(), 200)
    assert sizes[0] > 1
    # Every 8th step explores another size; after learning every other step runs alone.
    assert all(size == 1 for i, size in enumerate(sizes) if i >= 100 and i % 8 != 7)
    assert max(sizes[100:]) > 1  # exploration did not stop
