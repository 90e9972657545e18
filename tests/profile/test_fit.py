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
    for prompt in (256, 512, 2048, 4096, 8192, 20_000, 32768, 98304):
        points.append(fit.Point("prefill", "syn", model.prefill_time(prompt), prompt=prompt))
    for prompt, n in ((1024, 8), (2048, 4), (512, 16)):
        points.append(fit.Point("batch", "syn", model.step_time([(prompt, 0)] * n), n, prompt=prompt))
    rng.shuffle(points)
    return points


def _refit(
    truth: CostModel, points: list[fit.Point], request_overhead: bool = False, extend_floor: bool = False
) -> CostModel:
    theta, width, knee, heavy_from, extend_knee = fit.solve(
        points,
        truth.params["chunked_prefill_size"],
        request_overhead=request_overhead,
        extend_floor=extend_floor,
    )
    info = {"max_total_num_tokens": truth.params["kv_capacity_tokens"], "chunked_prefill_size": 8192}
    running = truth.params["max_running_requests"]
    params = fit.to_params(theta, width, knee, heavy_from, "refit", info, running, extend_knee)
    return CostModel.from_json(json.dumps(params))


def _without_split(params: dict) -> dict:
    """The main fit has no split-KV switch (`profile fit-split` fits it on a long-batch job)."""
    params.pop("split_kv_requests", None)
    return params


@pytest.mark.parametrize("heavy", [False, True])
def test_fit_recovers_a_known_model(heavy):
    params = _without_split(CostModel.load("llama3-8b-h200-flashinfer").params)
    if heavy:  # floor in the step overhead, 10 us more per token past 512, prefix pairs at twice the price
        params |= {
            "overhead_s": 0.0055,
            "linear_per_token_s": 1.2e-5,
            "linear_floor_s": 0.0,
            "linear_heavy_per_token_s": 1e-5,
            "linear_heavy_from_tokens": 512.0,
            "prefill_context_pair_s": 2 * params["prefill_pair_s"],
        }
    truth = CostModel.from_json(json.dumps(params))
    points = synthetic_points(truth, np.random.default_rng(0))
    refit = _refit(truth, points)
    errs = [abs(fit.predict(refit, p) / p.seconds - 1) for p in points]
    assert np.median(errs) < 0.02 and max(errs) < 0.10
    # The 8 x 1K step, priced above the lone-prompt slope when the heavy term is on, comes out right.
    eight = [(1024, 0)] * 8
    assert refit.step_time(eight) == pytest.approx(truth.step_time(eight), rel=0.03)
    if heavy:
        assert refit.params["linear_heavy_per_token_s"] > 0


def test_batch_points_read_prefill_steps_from_groups_of_first_tokens():
    # 32 prompts of 1K: one alone, then groups of 8 every 0.19 s (one prefill step of 8 x 1K each).
    ttft = [0.06] + [0.06 + 0.19 * g + 0.0005 * i for g in range(1, 4) for i in range(8)] + [0.85] * 7
    scenario = {"name": "decode_32x1024", "kind": "decode", "prompts": [1024] * 32, "ttft_s": ttft}
    (point,) = fit.batch_points([scenario], 8192)
    assert (point.kind, point.requests, point.prompt) == ("batch", 8, 1024)
    assert point.seconds == pytest.approx(0.19 - 7 * 0.0005, abs=1e-9)
    # Prompts that do not fill the chunk exactly, or mixed prompts, give no point.
    assert fit.batch_points([scenario | {"prompts": [1000] * 32}], 8192) == []
    assert fit.batch_points([scenario | {"prompts": [1024] * 31 + [512]}], 8192) == []


def test_fit_recovers_a_request_overhead_when_asked():
    truth_params = _without_split(CostModel.load("llama3-8b-h200-flashinfer").params)
    truth_params |= {"request_overhead_s": 0.007}
    truth = CostModel.from_json(json.dumps(truth_params))
    points = synthetic_points(truth, np.random.default_rng(1))
    points += [fit.Point("prefill", "syn", 0.007 + truth.prefill_time(p), prompt=p) for p in (16, 64, 256)]
    points = [
        fit.Point(p.kind, p.source, 0.007 + truth.prefill_time(p.prompt), prompt=p.prompt)
        if p.kind == "prefill"
        else p
        for p in points
    ]
    theta, *_ = fit.solve(points, 8192, request_overhead=True)
    assert theta[6] == pytest.approx(0.007, rel=0.05)
    theta_off, *_ = fit.solve(points, 8192)
    assert theta_off[6] == 0.0


def test_fit_recovers_an_extend_floor_when_asked():
    # The shape of the H200 Triton fit: lone prompts flat from 16 to 512 tokens (an 11 ms extend
    # floor), then 21.5 us per token; decode steps on a 2.8 ms floor.
    truth_params = CostModel.load("llama3-8b-h200-triton").params | {
        "overhead_s": 0.002,
        "linear_per_token_s": 2.15e-5,
        "linear_floor_s": 0.0028,
        "extend_floor_s": 0.011,
        "linear_heavy_per_token_s": 0.0,
        "request_overhead_s": 0.0075,
    }
    truth = CostModel.from_json(json.dumps(truth_params))
    points = synthetic_points(truth, np.random.default_rng(2))
    points += [fit.Point("prefill", "syn", truth.prefill_time(p), prompt=p) for p in (16, 64, 128)]
    points = [
        fit.Point(p.kind, p.source, 0.0075 + truth.prefill_time(p.prompt), prompt=p.prompt)
        if p.kind == "prefill"
        else p
        for p in points
    ]
    refit = _refit(truth, points, request_overhead=True, extend_floor=True)
    assert refit.params["extend_floor_s"] == pytest.approx(0.011, rel=0.1)
    assert refit.params["linear_floor_s"] < 0.5 * refit.params["extend_floor_s"]
    errs = [abs(fit.predict(refit, p) / p.seconds - 1) for p in points]
    assert max(errs) < 0.03
    # One floor for both kinds of step cannot price short prompts and small decode batches alike.
    plain = _refit(truth, points, request_overhead=True)
    assert "extend_floor_s" not in plain.params
    assert max(abs(fit.predict(plain, p) / p.seconds - 1) for p in points) > 2 * max(errs)


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
