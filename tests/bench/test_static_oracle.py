"""The static-oracle baseline: a search over static_buckets layouts in the simulator."""

from __future__ import annotations

import json

import numpy as np
import pytest
from bench_cli import run_cli

from l4_sglang.bench import static_oracle
from l4_sglang.core import CostModel
from l4_sglang.sim import simulate
from l4_sglang.workload import LengthMixture, poisson

BIMODAL = LengthMixture([(0.96, 1000, 0.1, 200, 0.0), (0.04, 40000, 0.1, 200, 0.0)])


@pytest.fixture(scope="module")
def model():
    return CostModel.load("llama3-8b-h200-flashinfer")


def test_candidate_boundaries_each_cut_the_trace_differently():
    prompts = [100] * 50 + [5000] * 30 + [60000] * 20
    cuts = static_oracle.candidate_boundaries(prompts)
    arr = np.array(prompts)
    below = [int((arr < b).sum()) for b in cuts]
    assert all(0 < n < len(prompts) for n in below)
    assert len(set(below)) == len(below) == 2  # only two different cuts exist
    assert static_oracle.candidate_boundaries([7] * 10) == []


def test_proportional_instances_follow_token_share():
    prompts = np.array([100] * 9 + [10000])
    tokens = prompts.copy()
    assert static_oracle.proportional_instances(prompts, tokens, (1000,), 10) == (1, 9)
    assert static_oracle.proportional_instances(prompts, tokens, (1000,), 2) == (1, 1)
    assert static_oracle.proportional_instances(prompts, tokens, (50, 1000), 2) is None


def test_the_oracle_is_at_least_as_good_as_the_even_split_and_scores_what_it_reports(model):
    trace = poisson(5.0, 60, BIMODAL, seed=2)
    found = static_oracle.search(trace.requests, model, 4)
    even = simulate(trace.requests, "static_buckets", model, 4, policy_overrides={"boundaries": (8192,)})
    even_mean = float(np.mean([r.e2e_s for r in even.completed]))
    assert found.best.completed == len(trace.requests)
    assert found.best.mean_e2e_s <= even_mean * (1 + 1e-9)
    reported = float(np.mean([r.e2e_s for r in found.best_result.completed]))
    assert reported == pytest.approx(found.best.mean_e2e_s)
    assert found.best == min(found.tried, key=static_oracle.Candidate.key)
    assert len({(c.boundaries, c.instances) for c in found.tried}) == len(found.tried)
    # The long 4% need their own bucket: the best cut lies above the short mode's median and below
    # the long mode (with split-KV a few short requests beside the long ones cost little, so it
    # may sit in the short mode's upper tail).
    assert 1000 < found.best.boundaries[0] <= 40000 * 0.7


def test_three_buckets_are_searched_when_asked(model):
    mix = LengthMixture([(0.8, 300, 0.1, 100, 0), (0.15, 6000, 0.1, 100, 0), (0.05, 50000, 0.1, 100, 0)])
    trace = poisson(4.0, 40, mix, seed=1)
    found = static_oracle.search(trace.requests, model, 6, max_buckets=3)
    assert any(len(c.boundaries) == 2 for c in found.tried)
    with pytest.raises(ValueError, match="at least 2 instances"):
        static_oracle.search(trace.requests, model, 1)


def test_bench_cli_reports_the_oracle_as_a_policy(tmp_path):
    trace = tmp_path / "bimodal.jsonl"
    reqs = poisson(4.0, 40, BIMODAL, seed=3).requests
    trace.write_text(
        "".join(
            json.dumps({"timestamp": int(r.arrival_s * 1000), "input_length": r.prompt_tokens,
                        "output_length": r.output_tokens, "hash_ids": []}) + "\n"
            for r in reqs
        )
    )  # fmt: skip
    out = tmp_path / "out"
    proc = run_cli(
        "--trace", str(trace), "--policies", "static_oracle,least_load", "--instances", "3",
        "--output-dir", str(out), "--quiet", timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    run = json.loads((out / "static_oracle.json").read_text())
    split = run["static_split"]
    assert run["policy"] == "static_oracle" and run["simulated"] is True
    assert sum(split["instances"]) == 3 and len(split["instances"]) == len(split["boundaries"]) + 1
    assert split["layouts_simulated"] == len(split["tried"]) >= 2
    best_tried = min(t["mean_e2e_s"] for t in split["tried"] if t["completed"] == run["completed"])
    assert run["mean_e2e_latency_ms"] == pytest.approx(best_tried * 1000)
    assert "static_oracle" in (out / "summary.md").read_text()
    bad = run_cli("--trace", str(trace), "--policies", "static_oracle", "--instances", "1",
                  "--output-dir", str(out), timeout=60)  # fmt: skip
    assert bad.returncode == 2 and "needs --instances >= 2" in bad.stderr
