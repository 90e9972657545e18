"""Shared fixtures: the cost model, made-up snapshots and a tiny event source.

`simulate` is not a simulator of GPU time: it advances `now` in fixed steps,
draws seeded arrivals of two kinds (chats ~500 tokens, documents ~60K),
reports a fixed number of generated tokens per step for every running
request, confirms every proposed migration at once and ticks every step. It
drives the policy through `PolicyDriver`, as the router and the simulator
do, so it produces the event sequences a router would.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import pytest

from l4_sglang import CostModel
from l4_sglang.policy import Migration, Policy, RequestInfo, WorkerSnapshot, make_policy
from l4_sglang.policy.driver import PolicyDriver


@pytest.fixture(scope="session")
def model() -> CostModel:
    return CostModel.load("llama3-8b-h100-default")


def snapshot(worker_id: str, running: int = 0, ctx: int = 1000, waiting: int = 0, **kw) -> WorkerSnapshot:
    """A worker running `running` requests of context `ctx` with `waiting` queued ones of `ctx`."""
    return WorkerSnapshot(
        worker_id=worker_id,
        running=running,
        waiting=waiting,
        kv_tokens=running * ctx,
        max_kv=ctx if running else 0,
        queued_tokens=waiting * ctx,
        max_total_tokens=kw.pop("max_total_tokens", 400_000),
        **kw,
    )


@pytest.fixture
def snap() -> Callable[..., WorkerSnapshot]:
    return snapshot


@dataclass
class Run:
    policy: Policy
    routes: list[tuple[float, str, str, str]] = field(default_factory=list)
    """(now, rid, kind, worker)"""
    migrations: list[tuple[float, Migration]] = field(default_factory=list)
    running: dict[str, list] = field(default_factory=dict)
    now: float = 0.0
    driver: PolicyDriver = field(init=False)

    def __post_init__(self) -> None:
        self.driver = PolicyDriver(self.policy)


KINDS = {"chat": (500, 50, 200), "doc": (60_000, 3_000, 300)}  # prompt mean, prompt sd, output mean


def simulate(
    policy: Policy,
    duration: float,
    rates: dict[str, float] | None = None,
    workers: int = 8,
    seed: int = 0,
    dt: float = 0.5,
    tokens_per_step: int = 20,
    run: Run | None = None,
) -> Run:
    rates = {"chat": 2.0, "doc": 0.1} if rates is None else rates
    if run is None:
        run = Run(policy)
        for i in range(workers):
            run.driver.worker_added(f"w{i}", 0.0)
    driver = run.driver
    rng = np.random.default_rng(seed)
    end = run.now + duration
    while run.now < end:
        run.now += dt
        t = run.now
        for kind, rate in rates.items():
            mean, sd, out_mean = KINDS[kind]
            for _ in range(rng.poisson(rate * dt)):
                rid = f"{kind}-{len(run.routes)}"
                prompt = int(max(16, rng.normal(mean, sd)))
                out = int(max(1, rng.normal(out_mean, out_mean * 0.3)))
                worker = driver.arrive(RequestInfo(rid, prompt), t)
                run.routes.append((t, rid, kind, worker))
                run.running[rid] = [0, out]
        for rid in list(run.running):
            g, out = run.running[rid]
            g = min(out, g + tokens_per_step)
            run.running[rid][0] = g
            for m in driver.progress(rid, g, t):
                driver.migration_accepted(m, t)
                run.migrations.append((t, m))
            if g >= out:
                driver.finish(rid, t)
                del run.running[rid]
        for m in driver.tick(t):
            driver.migration_accepted(m, t)
            run.migrations.append((t, m))
    return run


@pytest.fixture
def drive(model) -> Callable[..., Run]:
    """`drive(name, duration, overrides=None, seed=0, policy_seed=seed, **simulate_kwargs)`:
    a fresh policy seeded with `policy_seed`, driven by events drawn with `seed`."""

    def go(
        name: str,
        duration: float,
        overrides: dict | None = None,
        seed: int = 0,
        policy_seed: int | None = None,
        **kw,
    ) -> Run:
        policy = make_policy(name, model, overrides, seed=seed if policy_seed is None else policy_seed)
        return simulate(policy, duration, seed=seed, **kw)

    return go


@pytest.fixture
def sim() -> Callable[..., Run]:
    """`simulate` itself, to continue a run."""
    return simulate


@pytest.fixture
def resume() -> Callable[..., Run]:
    """`resume(run, duration, seed=0, **simulate_kwargs)`: drive an existing run further."""
    return lambda run, duration, seed=0, **kw: simulate(run.policy, duration, seed=seed, run=run, **kw)
