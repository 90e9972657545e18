"""L4 on a mixed pool: per-worker cost models, classes in the DP, per-worker balancing."""

from __future__ import annotations

import pytest

from l4_sglang import CostModel, evaluate_layout_classes, partition_classes
from l4_sglang.policy import RequestInfo, make_policy
from l4_sglang.policy.l4 import L4, L4Config

H200 = "llama3-8b-h200-flashinfer"
MIXED = {"worker_cost_models": tuple(f"w{i}={H200}" for i in range(4, 8))}


def test_worker_cost_models_are_loaded_per_worker(model):
    p = make_policy("l4", model, MIXED)
    assert isinstance(p, L4)
    assert p.model_of("w5").name == H200 and p.model_of("w1") is model and p.model_of("other") is model


@pytest.mark.parametrize(
    ("items", "match"),
    [
        pytest.param(("w1",), "WORKER=COST_MODEL", id="no-equals"),
        pytest.param(("=x",), "WORKER=COST_MODEL", id="no-worker"),
        pytest.param(("w1=",), "WORKER=COST_MODEL", id="no-model"),
        pytest.param(("w1=a", "w1=b"), "twice", id="duplicate"),
    ],
)
def test_bad_worker_cost_models_name_the_field(items, match):
    with pytest.raises(ValueError, match=f"worker_cost_models.*{match}"):
        L4Config(worker_cost_models=items)


def test_unknown_model_and_too_many_classes_are_errors(model):
    with pytest.raises(ValueError, match="cost_model"):
        make_policy("l4", model, {"worker_cost_models": ("w1=no-such-model",)})
    three = ("w1=llama3-8b-h100-flashinfer", f"w2={H200}", "w3=llama3-8b-h200-triton")
    with pytest.raises(ValueError, match="at most 3"):
        make_policy("l4", model, {"worker_cost_models": three})
    with pytest.raises(ValueError, match="cost_models"):
        L4(None, model, cost_models={"w1": "fast"})  # type: ignore[dict-item]


def test_admission_prices_each_worker_with_its_own_model(model, snap):
    """Two workers with the same batch: the faster model's worker predicts less work."""
    h200 = CostModel.load(H200)
    got = {}
    for label, models in [("one", None), ("mixed", {"b": h200})]:
        p = L4(None, model, cost_models=models)
        for w in ("a", "b"):
            p.add_worker(w, 0.0)
        p.on_load([snap("a", running=40, ctx=4000), snap("b", running=40, ctx=4000)], 0.0)
        got[label] = p.route(RequestInfo("r", 500), 0.0)
    assert got == {"one": "a", "mixed": "b"}


def test_one_model_for_everyone_changes_nothing(model, drive, sim):
    """A mapping that gives every worker the default model routes exactly as no mapping."""
    plain = drive("l4", 90.0)
    same = L4(None, model, cost_models={f"w{i}": model for i in range(8)})
    mapped = sim(same, 90.0)
    assert mapped.routes == plain.routes and mapped.migrations == plain.migrations
    assert mapped.policy.refinements[-1].classes == plain.policy.refinements[-1].classes


def test_mixed_pool_partitions_by_class(drive):
    """4 H100 + 4 H200 on chats (16/s) and documents (0.4/s): stages are one
    class each, both classes take traffic once planned, and the DP's class
    choice beats the same cuts with the classes swapped under the policy's own
    workload. (At 8 chats/s or fewer the DP parks the slower H100s on the
    empty [0, 16) range: the H200s alone predict less latency, and a stage
    never mixes classes. That is a known limit of one-class stages.)"""
    run = drive("l4", 120.0, MIXED, rates={"chat": 16.0, "doc": 0.4})
    p = run.policy
    planned_at = next(r.at for r in p.refinements if r.applied)
    served = {p.model_of(w).name for t, _, _, w in run.routes if t > planned_at}
    assert served == {"llama3-8b-h100-default", H200}, served
    last = p.refinements[-1]
    assert any(r.applied for r in p.refinements)
    view = p.layout()
    names = [{p.model_of(w).name for w in s.workers} for s in view.stages]
    assert all(len(n) == 1 for n in names), names
    assert {n for (n,) in names} == {"llama3-8b-h100-default", H200}
    classes = [(m, len(ws)) for m, ws in p.classes()]
    assert sorted(set(last.classes)) == [0, 1]
    workload = p._hist.workload(run.now)
    best = partition_classes(classes, workload, p.config.qoe())
    cuts = [s.first_bin for s in best.stages] + [workload.bins]
    swapped = evaluate_layout_classes(
        classes, workload, cuts, best.instances, [1 - c for c in best.classes], p.config.qoe()
    )
    assert best.total_cost < swapped.total_cost, (best.total_cost, swapped.total_cost)
    # New requests land on a worker of the stage holding their length, of that stage's class.
    t = run.now
    for i, prompt in enumerate([500, 60_000]):
        w = p.route(RequestInfo(f"new-{i}", prompt), t)
        k = view.stage_of(prompt)
        assert w in view.stages[k].workers


def test_simulated_mixed_pool_beats_a_class_blind_l4():
    """4 H100 + 4 H200 in the simulator: L4 told each worker's model beats L4
    that prices every worker as an H100, on mean and p90 E2E latency.

    The simulator runs sim-4..sim-7 on the H200 model (`instance_models`)."""
    from types import SimpleNamespace

    import numpy as np

    from l4_sglang.sim.run import Simulator

    h100, h200 = CostModel.load("llama3-8b-h100-flashinfer"), CostModel.load(H200)
    rng = np.random.default_rng(0)
    reqs, t = [], 0.0
    while t < 200.0:
        t += rng.exponential(1 / 6.0)
        doc = rng.random() < 0.05
        prompt = rng.normal(40_000, 4_000) if doc else max(16.0, rng.normal(500, 100))
        out = rng.normal(300, 60) if doc else max(1.0, rng.normal(200, 50))
        reqs.append(SimpleNamespace(arrival_s=t, prompt_tokens=int(prompt), output_tokens=int(out)))
    fast = [f"sim-{i}" for i in range(4, 8)]
    results = {}
    for aware in (False, True):
        policy = L4(None, h100, seed=0, cost_models=dict.fromkeys(fast, h200) if aware else None)
        sim = Simulator(reqs, policy, h100, 8, instance_models=dict.fromkeys(fast, h200))
        results[aware] = sim.run().summary()
        assert results[aware]["completed"] == len(reqs)
        if aware:
            stages = [{policy.model_of(w).name for w in s.workers} for s in policy.layout().stages]
            assert all(len(n) == 1 for n in stages) and len(stages) >= 2, stages
    for key in ("mean_e2e_latency_ms", "p90_e2e_latency_ms"):
        assert results[True][key] < results[False][key], (key, results[True][key], results[False][key])
