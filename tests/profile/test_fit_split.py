"""fit-split recovers where split-KV switches on, and replay-engine reproduces a job's batches.

The "real" job here is made by the engine itself running a known model (split_kv_requests 16),
so the tests know the answer the fit must find; the scenario shapes are the long plan's.
"""

from __future__ import annotations

import json

import pytest

from l4_sglang.core import CostModel
from l4_sglang.profile import engine_replay, fit_split, scenarios
from l4_sglang.worker.engine import EngineConfig

BASE = "llama3-8b-h200-flashinfer"
TRUE_SWITCH = 16.0


def _model(switch: float | None) -> CostModel:
    params = CostModel.load(BASE).params
    params.pop("measurements", None)
    params.pop("split_kv_requests", None)
    if switch is not None:
        params["split_kv_requests"] = switch
    return CostModel.from_json(json.dumps(params))


def _job(folder, model: CostModel) -> None:
    """A job folder as `profile job --plan long` writes it, its times from `model`."""
    config = EngineConfig(max_total_tokens=845_617, max_running_requests=3303, chunked_prefill_size=8192)
    results = []
    for name, kind, prompts, max_new in scenarios.long_plan(845_617):
        traces = engine_replay._run(model, config, prompts, [max_new] * len(prompts), None)
        reqs = [
            {"prompt_tokens": p, "max_new_tokens": max_new, "sent": t.sent, "chunks": t.chunks, "error": ""}
            for p, t in zip(prompts, traces, strict=True)
        ]
        step, n = scenarios.steady_step(traces)
        results.append(
            {"name": name, "kind": kind, "prompts": prompts, "max_new_tokens": max_new, "requests": reqs,
             "steady_step_s": step, "steady_requests": n, "ttft_s": []}
        )  # fmt: skip
    folder.mkdir()
    (folder / "scenarios.json").write_text(json.dumps(results))
    (folder / "meta.json").write_text(json.dumps({"gpu": "engine", "backend": "flashinfer", "date": "x"}))
    (folder / "server_info.json").write_text(json.dumps({"max_total_num_tokens": 845_617}))


@pytest.fixture(scope="module")
def job(tmp_path_factory):
    folder = tmp_path_factory.mktemp("jobs") / "long"
    _job(folder, _model(TRUE_SWITCH))
    return folder


def test_fit_split_finds_the_switch_the_batches_were_made_with(job):
    params, summary = fit_split.fit_split(job, _model(None).params, "refit", holdout=0.3)
    assert summary["split_kv_requests"] is not None
    assert abs(summary["split_kv_requests"] / TRUE_SWITCH - 1) < 0.15, summary
    assert summary["median_abs_error_fit"] < 0.02
    # Without the switch the same batches are priced far off: the lone long decodes.
    assert summary["median_abs_error_without_split"] > 0.2, summary
    refit = CostModel.from_json(json.dumps({k: v for k, v in params.items() if k != "measurements"}))
    assert refit.params["split_kv_requests"] == summary["split_kv_requests"]
    assert params["provenance"]["split_kv"]["fit"]["held_out"] == summary["held_out"] > 0


def test_replay_engine_matches_its_own_model_and_not_another(job):
    real = json.loads((job / "scenarios.json").read_text())
    info = json.loads((job / "server_info.json").read_text())
    same = engine_replay.replay(real, _model(TRUE_SWITCH), info)
    assert same and all(abs(r["e2e_s_rel_diff"]) < 0.01 and abs(r["itl_s_rel_diff"]) < 0.01 for r in same)
    other = {r["scenario"]: r for r in engine_replay.replay(real, _model(None), info)}
    assert other["long_1x60k"]["itl_s_rel_diff"] > 1.0  # no split: a lone long decode ~5x slower
    assert abs(other["mix_1x60k_63x1k"]["itl_s_rel_diff"]) < 0.05  # 64 requests: past the switch
