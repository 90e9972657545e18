"""Synthetic generators: seeded, with the asked-for rate, burstiness and lengths."""

from __future__ import annotations

import numpy as np
import pytest

from l4_sglang.workload import LengthMixture, gamma, poisson

MIX = LengthMixture([(0.8, 500, 0.5, 200, 0.5), (0.2, 30_000, 0.3, 300, 0.2)])


def test_poisson_seeded_and_rate():
    a = poisson(20.0, 500.0, MIX, seed=3)
    b = poisson(20.0, 500.0, MIX, seed=3)
    c = poisson(20.0, 500.0, MIX, seed=4)
    assert a.requests == b.requests
    assert a.requests != c.requests
    assert a.duration_s == 500.0 and a.arrivals().max() < 500.0
    assert np.all(np.diff(a.arrivals()) >= 0)
    assert a.mean_rate == pytest.approx(20.0, rel=0.03)
    gaps = np.diff(a.arrivals())
    assert gaps.std() / gaps.mean() == pytest.approx(1.0, abs=0.05)


@pytest.mark.parametrize("cv", [0.5, 2.0])
def test_gamma_rate_and_cv(cv):
    t = gamma(50.0, cv, 400.0, LengthMixture.fixed(1000, 100), seed=1)
    assert t.mean_rate == pytest.approx(50.0, rel=0.04)
    gaps = np.diff(t.arrivals())
    assert gaps.std() / gaps.mean() == pytest.approx(cv, rel=0.08)
    assert set(t.prompt_lengths().tolist()) == {1000} and set(t.output_lengths().tolist()) == {100}


def test_length_mixture_weights_and_medians():
    p, o = MIX.sample(20_000, np.random.default_rng(0))
    long = p > 5_000
    assert long.mean() == pytest.approx(0.2, abs=0.01)
    assert np.median(p[~long]) == pytest.approx(500, rel=0.05)
    assert np.median(p[long]) == pytest.approx(30_000, rel=0.05)
    assert p.min() >= 1 and o.min() >= 1


@pytest.mark.parametrize(
    ("call", "field"),
    [
        (lambda: poisson(0.0, 10.0, MIX), "rate"),
        (lambda: gamma(1.0, -1.0, 10.0, MIX), "cv"),
        (lambda: poisson(1.0, float("inf"), MIX), "duration_s"),
        (lambda: LengthMixture([]), "components"),
        (lambda: LengthMixture([(1.0, -5, 0.1, 10, 0.1)]), r"components\[0\]"),
        (lambda: LengthMixture([(1.0, 5, 0.1, 10)]), r"components\[0\]"),
    ],
)
def test_bad_arguments(call, field):
    with pytest.raises(ValueError, match=field):
        call()
