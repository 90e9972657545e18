"""The decayed histogram against Workload.from_requests, the DP's own accounting."""

from __future__ import annotations

import math

import numpy as np
import pytest

from l4_sglang import Workload, log_bin_edges
from l4_sglang.policy.histogram import LengthHistogram


@pytest.mark.parametrize("chunk", [1, 7, 1000])
def test_without_decay_it_matches_from_requests(chunk):
    rng = np.random.default_rng(0)
    edges = log_bin_edges(16, max_tokens=65536)
    prompts = rng.integers(10, 40_000, 60)
    outputs = rng.integers(1, 3_000, 60)
    h = LengthHistogram(edges, math.inf)
    for i, (p, o) in enumerate(zip(prompts.tolist(), outputs.tolist(), strict=True)):
        t = 100.0 * i / len(prompts)
        h.add_arrival(p, t)
        for g in range(0, o, chunk):  # progress reported in chunks
            h.add_decode(p, g, min(o, g + chunk), t)
        h.add_finish(p, o, t)
    got = h.workload(100.0)
    want = Workload.from_requests(prompts, outputs, 100.0, edges)
    for f in ("arrival_rate", "prompt_tokens", "decode_rate", "decode_context", "growth_rate"):
        np.testing.assert_allclose(getattr(got, f), getattr(want, f), rtol=1e-9, atol=1e-9, err_msg=f)


def test_decay_halves_old_weight_and_rates_stay_unbiased():
    edges = log_bin_edges(8)
    h = LengthHistogram(edges, half_life_s=10.0)
    # A constant stream of 2 requests/s for 200 s: the rate estimate is 2.
    for i in range(400):
        h.add_arrival(100, i * 0.5)
    assert h.workload(199.5).arrival_rate.sum() == pytest.approx(2.0, rel=0.05)
    # Ten half-lives of silence later the decayed rate is about 2 / 2**10.
    rate = h.workload(299.5).arrival_rate.sum()
    assert rate == pytest.approx(2.0 / 2**10, rel=0.05)


def test_rescaling_keeps_estimates():
    edges = log_bin_edges(8)
    h = LengthHistogram(edges, half_life_s=10.0)
    for i in range(4000):  # 2000 s, past the rescale threshold (30 tau = 433 s) several times
        h.add_arrival(100 if i % 2 else 5000, i * 0.5)
    w = h.workload(1999.5)
    assert np.isfinite(w.arrival_rate).all() and w.arrival_rate.sum() == pytest.approx(2.0, rel=0.05)


def test_remaining_is_the_mean_residual_of_longer_outputs():
    h = LengthHistogram(log_bin_edges(32), math.inf)
    assert h.remaining(500, 0) is None
    for out in (100, 100, 100, 1000, 1000, 1000):
        h.add_finish(500, out, 0.0)
    assert h.remaining(500, 0) == pytest.approx(550)
    assert h.remaining(500, 500) == pytest.approx(500)  # only the 1000s ran longer
    assert h.remaining(500, 2000) is None
    # A prompt bin without samples of its own pools all bins.
    assert h.remaining(50_000, 500) == pytest.approx(500)
