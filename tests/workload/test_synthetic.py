"""Synthetic generators: seeded, with the asked-for rate, burstiness and lengths."""

from __future__ import annotations

import numpy as np
import pytest

from l4_sglang.workload import SYNTHETIC_KINDS, LengthMixture, Phase, gamma, phased, poisson, synthetic_trace

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


def test_phased_draws_each_phase_with_its_rate_and_lengths():
    short, long = LengthMixture.fixed(1000, 10), LengthMixture.fixed(40_000, 10)
    phases = [Phase(200.0, 20.0, short), Phase(100.0, 5.0, long), Phase(200.0, 20.0, short)]
    t = phased(phases, seed=2)
    assert t.requests == phased(phases, seed=2).requests
    assert t.requests != phased(phases, seed=3).requests
    assert t.duration_s == 500.0
    a, p = t.arrivals(), t.prompt_lengths()
    for lo, hi, rate, prompt in [(0, 200, 20.0, 1000), (200, 300, 5.0, 40_000), (300, 500, 20.0, 1000)]:
        inside = (a >= lo) & (a < hi)
        assert set(p[inside].tolist()) == {prompt}
        assert inside.sum() / (hi - lo) == pytest.approx(rate, rel=0.1)
    with pytest.raises(ValueError, match=r"phases\[1\]: invalid rate"):
        phased([phases[0], Phase(10.0, 0.0, short)])
    with pytest.raises(ValueError, match="phases"):
        phased([])


@pytest.mark.parametrize("kind", SYNTHETIC_KINDS)
def test_named_workloads_are_seeded_and_fit_the_context(kind):
    a = synthetic_trace(kind, 8.0, 300.0, seed=1)
    assert a.requests == synthetic_trace(kind, 8.0, 300.0, seed=1).requests
    assert a.requests != synthetic_trace(kind, 8.0, 300.0, seed=2).requests
    assert a.name == kind
    assert max(r.prompt_tokens + r.output_tokens for r in a) <= 131072


def test_bimodal_long_share():
    t = synthetic_trace("bimodal", 50.0, 400.0, long_share=0.04, seed=0)
    p = t.prompt_lengths()
    assert (p > 16_000).mean() == pytest.approx(0.04, abs=0.005)
    assert np.median(p[p < 16_000]) == pytest.approx(1024, rel=0.05)
    assert np.median(p[p > 16_000]) == pytest.approx(61440, rel=0.05)


def test_trimodal_and_lognormal_shapes():
    p = synthetic_trace("trimodal", 50.0, 400.0).prompt_lengths()
    modes = [(p < 3000).mean(), ((p >= 3000) & (p < 20_000)).mean(), (p >= 20_000).mean()]
    assert modes == pytest.approx([0.85, 0.12, 0.03], abs=0.01)
    q = synthetic_trace("lognormal", 50.0, 400.0).prompt_lengths()
    assert np.median(q) == pytest.approx(1500, rel=0.05)
    assert np.percentile(q, 99) / np.median(q) == pytest.approx(np.exp(1.3 * 2.326), rel=0.15)


def test_nonstationary_shifts_its_length_mix_at_a_level_token_rate():
    t = synthetic_trace("nonstationary", 10.0, 900.0, seed=4)
    a, p = t.arrivals(), t.prompt_lengths()
    share, tokens = [], []
    for lo in (0, 300, 600):
        inside = (a >= lo) & (a < lo + 300)
        share.append((p[inside] > 16_000).mean())
        tokens.append(p[inside].sum() / 300)
    assert share[0] == pytest.approx(0.01, abs=0.007) and share[2] == pytest.approx(0.01, abs=0.007)
    assert share[1] == pytest.approx(0.3, abs=0.05)
    assert max(tokens) / min(tokens) < 1.35  # about the same prompt tokens per second in each phase
    assert ((a >= 300) & (a < 600)).sum() < 0.25 * (a < 300).sum()  # fewer, longer requests


def test_named_workload_arguments():
    with pytest.raises(ValueError, match="unknown synthetic workload 'nope'"):
        synthetic_trace("nope", 1.0, 10.0)
    with pytest.raises(ValueError, match="doc_share is for the nonstationary"):
        synthetic_trace("bimodal", 1.0, 10.0, doc_share=0.2)
    with pytest.raises(ValueError, match="long_share"):
        synthetic_trace("bimodal", 1.0, 10.0, long_share=1.5)
