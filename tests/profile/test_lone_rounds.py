"""The lone-prompt job mode against an emulated worker over HTTP: every size measured once a round,
each round in its own order, then each size back to back, in the format fit and replay read."""

import json

import numpy as np
import pytest

from l4_sglang.profile import fit, job, replay, scenarios
from l4_sglang.worker.server import BackgroundWorker, WorkerSettings


def test_lone_rounds_measure_every_size_once_a_round_in_shuffled_orders(tmp_path):
    worker = BackgroundWorker(WorkerSettings(port=0, time_scale=0.05)).start()
    try:
        results = job.run_lone_rounds(worker.url, rounds=4, out=tmp_path, seed=3)
    finally:
        worker.stop()
    sizes = scenarios.LONE_SIZES
    names = [r["name"] for r in results]
    assert names == [f"prefill_{p}" for p in sizes] + [f"prefill_{p}_block" for p in sizes]
    for r in results:
        assert r["kind"] == "prefill" and len(r["ttft_s"]) == 4 and all(t > 0 for t in r["ttft_s"])
        assert all(not t["error"] and t["output_tokens"] == 1 for t in r["requests"])
    order = results[0]["order"]
    assert len(order) == 4 and all(sorted(o) == sorted(sizes) for o in order)
    assert len({tuple(o) for o in order}) > 1  # shuffled, not one fixed order
    assert json.loads((tmp_path / "scenarios.json").read_text()) == results
    # The fitter takes every result as a lone-prompt point at its median.
    points = fit.scenario_points(results)
    assert sorted(p.prompt for p in points) == sorted(list(sizes) * 2)


def test_replay_sets_the_real_spread_beside_the_mean():
    def lone(name, ttfts):
        requests = [{"sent": 0.0, "chunks": [t]} for t in ttfts]
        return {"name": name, "kind": "prefill", "ttft_s": ttfts, "requests": requests}

    rows = replay.compare([lone("prefill_16", [0.02, 0.03, 0.028])], [lone("prefill_16", [0.025])])
    row = rows[0]
    assert row["real_ttft_min_s"] == 0.02 and row["real_ttft_max_s"] == 0.03
    assert row["emulated_ttft_inside_real_range"] is True
    rows = replay.compare([lone("prefill_16", [0.02, 0.021])], [lone("prefill_16", [0.03])])
    assert rows[0]["emulated_ttft_inside_real_range"] is False


def _lone(name, size, ttfts):
    requests = [{"prompt_tokens": size, "sent": 0.0, "chunks": [t]} for t in ttfts]
    return {
        "name": name,
        "kind": "prefill",
        "prompts": [size] * len(ttfts),
        "ttft_s": ttfts,
        "requests": requests,
    }


def test_a_lone_rounds_job_pools_each_size_and_replaces_the_jobs_lone_prompts(tmp_path):
    lone = [_lone("prefill_16", 16, [0.02, 0.03]), _lone("prefill_16_block", 16, [0.01, 0.04, 0.05])]
    pooled = fit.pooled_lone_prompts([*lone, _lone("prefill_64", 64, [0.02])])
    assert [(s["name"], s["ttft_s"]) for s in pooled] == [
        ("prefill_16", [0.02, 0.03, 0.01, 0.04, 0.05]),
        ("prefill_64", [0.02]),
    ]
    assert [p.seconds for p in fit.scenario_points(pooled)] == [0.03, 0.02]  # one median point per size
    (tmp_path / "scenarios.json").write_text(json.dumps(lone))
    (tmp_path / "meta.json").write_text(json.dumps({"gpu": "H100", "backend": "triton"}))
    job_scenarios = [_lone("prefill_16", 16, [0.9]), _lone("prefill_8192", 8192, [0.3])]
    merged, note = fit._with_lone_prompts(job_scenarios, {"gpu": "H100", "backend": "triton"}, tmp_path)
    assert "lone-prompt TTFTs of 16 tokens come from" in note  # the one size replaced
    assert sorted((s["prompts"][0], float(np.median(s["ttft_s"]))) for s in merged) == [
        (16, 0.03),
        (8192, 0.3),
    ]
    with pytest.raises(SystemExit, match="backend 'triton' is not the job's 'flashinfer'"):
        fit._with_lone_prompts(job_scenarios, {"gpu": "H100", "backend": "flashinfer"}, tmp_path)
