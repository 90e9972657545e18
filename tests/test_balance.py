"""Balancing math: in-stage pick, boundary diffusion, pairwise migration."""

import pytest

from l4_sglang import (
    CostModel,
    InstanceLoad,
    diffuse_boundary,
    move_value,
    pick_instance,
    pick_migration,
    predicted_work,
)


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.load("llama3-8b-h100-default")


def busy(running, ctx, queued=0, remaining=300.0):
    return InstanceLoad(
        running=running,
        kv_tokens=running * ctx,
        max_kv=ctx,
        queued_requests=queued,
        queued_tokens=queued * ctx,
        mean_remaining=remaining,
    )


def test_predicted_work_orders_loads(model):
    idle, light, heavy = InstanceLoad(), busy(4, 1000), busy(64, 8000, queued=3)
    works = [predicted_work(model, x) for x in (idle, light, heavy)]
    assert works[0] == 0 and works[0] < works[1] < works[2]


def test_pick_with_full_sample_takes_least_work(model):
    loads = [busy(64, 8000), busy(8, 1000), busy(2, 500, queued=4), busy(32, 2000)]
    works = [predicted_work(model, x) for x in loads]
    assert pick_instance(model, loads, candidates=4) == works.index(min(works))


def test_pick_two_choices_never_takes_the_worst_of_two(model):
    loads = [busy(n, 2000) for n in (1, 10, 20, 40, 80)]
    picks = [pick_instance(model, loads, candidates=2, seed=s) for s in range(200)]
    assert 4 not in picks  # the busiest loses every pairwise comparison
    assert picks == [pick_instance(model, loads, candidates=2, seed=s) for s in range(200)]
    assert picks.count(0) > picks.count(3)


def test_diffusion_direction_and_bounds():
    assert diffuse_boundary(8192, 0.9, 0.2, 1024, 65536) < 8192
    assert diffuse_boundary(8192, 0.2, 0.9, 1024, 65536) > 8192
    assert diffuse_boundary(8192, 0.5, 0.5, 1024, 65536) == 8192
    for lower, upper in [(1.0, 0.0), (0.0, 1.0)]:
        b = diffuse_boundary(2000, lower, upper, 1024, 4096, rate=10, deadband=0)
        assert 1024 < b < 4096


def test_move_value_rewards_relieving_a_long_mix(model):
    source = InstanceLoad(running=3, kv_tokens=102_000, max_kv=100_000, mean_remaining=500)
    source_after = InstanceLoad(running=2, kv_tokens=2_000, max_kv=1_000, mean_remaining=500)
    gain, cost = move_value(model, 100_000, 500, source, source_after, InstanceLoad(mean_remaining=500))
    assert gain > 0 and cost > 0
    # Nearly done: not worth a 100K-token recompute.
    gain_late, _ = move_value(model, 100_000, 2, source, source_after, InstanceLoad(mean_remaining=500))
    assert gain_late < cost


def test_pick_migration_moves_from_busiest_to_idlest(model):
    loads = [busy(2, 1000), InstanceLoad(running=3, kv_tokens=101_000, max_kv=99_000, mean_remaining=400)]
    requests = [[(10, 1000, 300), (11, 1000, 300)], [(20, 1000, 400), (21, 1000, 400), (22, 99_000, 400)]]
    move = pick_migration(model, loads, requests)
    assert move is not None and (move.source, move.target) == (1, 0)
    assert move.request in (20, 21, 22) and move.gain_s > move.cost_s
    assert pick_migration(model, loads, requests, margin=1e9) is None


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda m: pick_instance(m, [], 2), "loads"),
        (lambda m: pick_instance(m, [InstanceLoad(running=-1)], 2), "running"),
        (lambda m: pick_instance(m, [InstanceLoad()], 0), "candidates"),
        (lambda m: diffuse_boundary(100, 1, 0, 1024, 4096), "boundary"),
        (lambda m: diffuse_boundary(2000, float("nan"), 0, 1024, 4096), "lower_load"),
        (lambda m: diffuse_boundary(2000, 1, 0, 1024, 4096, deadband=1.5), "deadband"),
        (lambda m: pick_migration(m, [InstanceLoad()], [[], []]), "requests"),
        (lambda m: pick_migration(m, [InstanceLoad()] * 2, [[(1, -5, 3)], []]), "requests"),
        (lambda m: pick_migration(m, [InstanceLoad()] * 2, [[], []], min_gap=float("inf")), "min_gap"),
    ],
)
def test_bad_input_names_the_field(model, call, field):
    with pytest.raises(ValueError, match=field):
        call(model)


def _marginal_reference(m, load, prompt, horizon):
    """The marginal cost written out with the cost model's own step functions."""
    n, q = load.running, load.queued_requests
    wait = q * m.prefill_time(load.queued_tokens / q) if q > 0 else 0.0
    before = m.decode_step_time(n, load.kv_tokens, load.max_kv) if n > 0 else 0.0
    after = m.decode_step_time(n + 1, load.kv_tokens + prompt, max(load.max_kv, prompt))
    return wait + (n + 1) * m.prefill_time(prompt) + horizon * (after + n * (after - before))


def test_pick_marginal_matches_its_formula_on_mixed_models():
    import numpy as np

    from l4_sglang import CostModel, InstanceLoad, pick_marginal

    rng = np.random.default_rng(3)
    models = [CostModel.load("llama3-8b-h100-flashinfer"), CostModel.load("llama3-8b-h200-flashinfer")]
    for _ in range(200):
        k = int(rng.integers(1, 6))
        loads, ms = [], []
        for _ in range(k):
            running = float(rng.integers(0, 60))
            ctx = float(rng.integers(100, 30_000))
            loads.append(
                InstanceLoad(
                    running=running,
                    kv_tokens=running * ctx,
                    max_kv=ctx * float(rng.integers(1, 4)) if running else 0.0,
                    queued_requests=float(rng.integers(0, 3)),
                    queued_tokens=float(rng.integers(0, 20_000)),
                )
            )
            ms.append(models[int(rng.integers(0, 2))])
        prompt = float(rng.choice([50, 800, 8_000, 60_000]))
        costs = [_marginal_reference(m, x, prompt, 100.0) for m, x in zip(ms, loads, strict=True)]
        assert pick_marginal(ms, loads, prompt, 100.0) == int(np.argmin(costs))


def test_pick_marginal_rejects_bad_input():
    from l4_sglang import CostModel, InstanceLoad, pick_marginal

    m = CostModel.load("llama3-8b-h100-flashinfer")
    with pytest.raises(ValueError, match="prompt"):
        pick_marginal(m, [InstanceLoad()], float("nan"))
    with pytest.raises(ValueError, match="model"):
        pick_marginal([m, m], [InstanceLoad()], 10.0)
