"""Cost model through the Python API: shape of the curve, the length-mix term, input checks."""

import json

import pytest

from l4_sglang import CostModel, available_cost_models


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.load("llama3-8b-h100-default")


def test_every_shipped_calibration_loads_and_has_provenance():
    names = available_cost_models()
    assert "llama3-8b-h100-default" in names
    for name in names:
        params = CostModel.load(name).params
        assert params["name"] == name
        assert params["provenance"], f"{name} ships without provenance"


@pytest.mark.parametrize("batch_size", [1, 8, 64])
def test_step_time_is_monotone_in_context(model, batch_size):
    times = [model.step_time([(1, ctx)] * batch_size) for ctx in (0, 512, 4096, 32768, 131072)]
    assert times == sorted(times)
    assert len(set(times)) == len(times)


def test_step_time_is_monotone_in_new_tokens(model):
    times = [model.step_time([(new, 1000)]) for new in (2, 64, 512, 4096, 8192)]
    assert times == sorted(times)


def test_mixed_batch_costs_more_than_its_homogeneous_twin(model):
    # docs/design.md's premise: one 128K request beside 63 short ones, same total KV as 64 x 4064.
    mixed = [(1, 2048)] * 63 + [(1, 131072)]
    homogeneous = [(1, 4064)] * 64
    assert sum(c for _, c in mixed) == sum(c for _, c in homogeneous)
    ratio = model.step_time(mixed) / model.step_time(homogeneous)
    assert ratio > 1.5
    flat = model.without_heterogeneity()
    assert flat.step_time(mixed) == pytest.approx(flat.step_time(homogeneous), rel=1e-12)


def test_kernel_premise_is_reproduced_by_the_attention_term(model):
    """The default calibration's decode term, per layer, against docs/design.md's kernel numbers."""
    p = model.params
    per_layer = p["decode_kv_s"] / 32

    def attention_ms(contexts):
        s, peak = sum(contexts), max(contexts)
        return 1e3 * per_layer * (s + p["het_alpha"] * max(0.0, p["het_width"] * peak - s))

    measured = [([4096] * 64, 0.47), ([131072] + [2080] * 63, 3.98), ([235520] + [512] * 63, 6.60)]
    for contexts, ms in measured:
        assert attention_ms(contexts) == pytest.approx(ms, rel=0.05)


def test_prefill_time_grows_superlinearly(model):
    short, long = model.prefill_time(8192), model.prefill_time(8 * 8192)
    assert long > 8 * short
    assert model.prefill_time(0) == 0


def test_decode_operating_point(model):
    n, step = model.decode_operating_point(rate=500, busy=0.9, mean_kv=2000, max_kv=4000)
    assert n == pytest.approx(500 / 0.9 * step, rel=1e-9)
    assert model.decode_operating_point(rate=1e7, busy=1.0, mean_kv=2000, max_kv=4000) is None


def test_decode_throughput_rises_with_batch(model):
    rates = [model.decode_throughput(n, 2000, 2000) for n in (1, 8, 64, 128)]
    assert rates == sorted(rates)


@pytest.mark.parametrize(
    ("patch", "field"),
    [
        ({"decode_kv_s": -1}, "decode_kv_s"),
        ({"het_width": 0}, "het_width"),
        ({"kv_capacity_tokens": 0}, "kv_capacity_tokens"),
        ({"chunked_prefill_size": -5}, "chunked_prefill_size"),
        ({"unknown_knob": 1}, "unknown_knob"),
        ({"request_overhead_s": -0.001}, "request_overhead_s"),
        ({"extend_floor_s": -0.001}, "extend_floor_s"),
        ({"overhead_s": "fast"}, "cost_model"),
    ],
)
def test_bad_calibration_names_the_field(model, patch, field):
    params = model.params | patch
    with pytest.raises(ValueError, match=field):
        CostModel.from_json(json.dumps(params))


def test_unknown_name_and_missing_file(tmp_path):
    with pytest.raises(ValueError, match="unknown name"):
        CostModel.load("no-such-gpu")
    with pytest.raises(ValueError, match="no file"):
        CostModel.load(tmp_path / "missing.json")


def test_bad_runtime_arguments(model):
    with pytest.raises(ValueError, match="prompt_tokens"):
        model.prefill_time(float("nan"))
    with pytest.raises(ValueError, match="batch"):
        model.step_time([(-1, 10)])
    with pytest.raises(ValueError, match="mean_kv"):
        model.decode_throughput(4, -1, 10)
