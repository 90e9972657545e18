"""`bench predict`: the DP's predicted mean E2E of layouts beside the simulator's (SIMULATED)."""

import math

import pytest

from l4_sglang.bench import predict
from l4_sglang.core import CostModel, log_bin_edges
from l4_sglang.workload.synthetic import synthetic_trace


@pytest.fixture(scope="module")
def requests():
    trace = synthetic_trace("bimodal", rate=6.0, duration_s=60.0, seed=0)
    return list(trace.requests)


def test_the_trace_workload_holds_every_request(requests):
    edges = log_bin_edges(32, 131072)
    w = predict.trace_workload(requests, edges)
    span = max(r.arrival_s for r in requests) - min(r.arrival_s for r in requests)
    assert math.isclose(float(w.arrival_rate.sum()) * span, len(requests), rel_tol=1e-9)
    tokens = sum(max(r.output_tokens, 1) for r in requests)
    assert math.isclose(float(w.decode_rate.sum()) * span, tokens, rel_tol=1e-6)


def test_every_layout_is_predicted_and_simulated(requests):
    model = CostModel.load("llama3-8b-h100-flashinfer")
    checks = predict.check_layouts(requests, model, 4)
    assert checks[0].label == "DP" and checks[1].label == "one stage"
    assert len({(c.boundaries, c.instances) for c in checks}) == len(checks)
    for c in checks:
        assert sum(c.instances) == 4 and len(c.instances) == len(c.boundaries) + 1
        assert math.isfinite(c.predicted_s) and c.predicted_s > 0
        assert c.completed == len(requests) and c.simulated_s > 0
    text = predict.report(checks, "test")
    assert "SIMULATED" in text and text.count("\n| ") == len(checks) + 1


def test_the_command_rejects_a_missing_trace(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        predict.main(["--trace", str(tmp_path / "none.jsonl"), "--instances", "4"])
    assert e.value.code == 2 and "trace file not found" in capsys.readouterr().err
