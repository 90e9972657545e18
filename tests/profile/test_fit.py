"""The calibration fitter recovers a known model from its own predictions, and
every shipped calibration carries its provenance and held-out error."""

import json

import numpy as np
import pytest

from l4_sglang import CostModel, available_cost_models
from l4_sglang.profile import fit


def synthetic_points(model: CostModel, rng: np.random.Generator) -> list[fit.Point]:
    points = []
    for n in (1, 4, 16, 32, 64, 128, 256):
        for mean in (512, 2048, 8192):
            for spread in (1.0, 4.0, 30.0):
                peak = min(mean * spread, 130_000)
                kv = n * mean + (peak - mean)
                points.append(fit.Point("decode", "syn", model.decode_step_time(n, kv, peak), n, kv, peak))
    for prompt in (512, 2048, 8192, 20_000, 32768, 98304):
        points.append(fit.Point("prefill", "syn", model.prefill_time(prompt), prompt=prompt))
    rng.shuffle(points)
    return points


def test_fit_recovers_a_known_model():
    truth = CostModel.load("llama3-8b-h200-flashinfer")
    points = synthetic_points(truth, np.random.default_rng(0))
    theta, width, knee = fit.solve(points, truth.params["chunked_prefill_size"])
    info = {"max_total_num_tokens": truth.params["kv_capacity_tokens"], "chunked_prefill_size": 8192}
    params = fit.to_params(theta, width, knee, "refit", info, truth.params["max_running_requests"])
    refit = CostModel.from_json(json.dumps(params))
    errs = [abs(fit.predict(refit, p) / p.seconds - 1) for p in points]
    assert np.median(errs) < 0.02 and max(errs) < 0.10


def test_fit_recovers_a_request_overhead_when_asked():
    truth_params = CostModel.load("llama3-8b-h200-flashinfer").params | {"request_overhead_s": 0.007}
    truth = CostModel.from_json(json.dumps(truth_params))
    points = synthetic_points(truth, np.random.default_rng(1))
    points += [fit.Point("prefill", "syn", 0.007 + truth.prefill_time(p), prompt=p) for p in (16, 64, 256)]
    points = [
        fit.Point(p.kind, p.source, 0.007 + truth.prefill_time(p.prompt), prompt=p.prompt)
        if p.kind == "prefill"
        else p
        for p in points
    ]
    theta, _, _ = fit.solve(points, 8192, request_overhead=True)
    assert theta[6] == pytest.approx(0.007, rel=0.05)
    theta_off, _, _ = fit.solve(points, 8192)
    assert theta_off[6] == 0.0


def test_log_points_keep_only_pure_decode_intervals():
    lines = "\n".join(
        f"[t] Decode batch, #running-req: {n}, #token: {s}, token usage: 0.0, cuda graph: True, "
        f"gen throughput (token/s): {thr}, #queue-req: {q}"
        for n, s, thr, q in [
            (8, 8000, 1000.0, 0),
            (8, 8080, 1600.0, 0),  # +10 per request: pure, step = 8 / 1600
            (8, 8160, 1600.0, 0),  # pure again
            (8, 9000, 900.0, 0),  # a prefill slipped in: not pure
            (8, 9080, 1500.0, 2),  # queue non-empty: not pure
        ]
    )
    points = fit.log_points(lines)
    assert len(points) == 1 and points[0].requests == 8
    assert points[0].seconds == pytest.approx(8 / 1600)


@pytest.mark.parametrize("name", [n for n in available_cost_models() if n != "llama3-8b-h100-default"])
def test_fitted_calibrations_say_where_they_come_from(name):
    params = CostModel.load(name).params
    prov = params["provenance"]
    assert prov["status"] == "fitted on a real SGLang engine"
    assert prov["engine"].startswith("SGLang 0.5.14") and prov["gpu"] and prov["attention_backend"]
    assert prov["fit"]["held_out"] >= 1
    held = params["measurements"]["held_out"]
    assert len(held) == prov["fit"]["held_out"]
    median = float(np.median([abs(e["rel_error"]) for e in held]))
    assert median == pytest.approx(prov["fit"]["median_abs_error_held_out"], abs=1e-9)


def test_holdout_takes_each_kind_from_inside_its_range():
    points = [fit.Point("prefill", f"p{n}", 0.01 * n, prompt=n) for n in (16, 64, 256, 2048, 8192, 98304)]
    points += [fit.Point("decode", f"d{n}", 0.005, n, 1024.0 * n, 1024.0) for n in (1, 8, 32, 64, 100)]
    for seed in range(20):
        held = fit.holdout_indices(points, 0.3, seed)
        kinds = [points[i].kind for i in held]
        assert kinds.count("prefill") == 2 and kinds.count("decode") == 2  # round(0.3 x 6), round(0.3 x 5)
        sources = {points[i].source for i in held}
        assert not sources & {"p16", "p98304", "d1", "d100"}  # each kind's range ends stay in the fit
    assert fit.holdout_indices(points, 0.3, 1) == fit.holdout_indices(points, 0.3, 1)
