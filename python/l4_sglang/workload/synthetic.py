"""Seeded synthetic traces: Poisson or gamma arrivals with lognormal length mixtures."""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

from l4_sglang.workload.trace import Trace, TraceRequest


class LengthMixture:
    """A mixture of lognormal (prompt, output) length components.

    Each component is `(weight, prompt_median, prompt_sigma, output_median, output_sigma)`:
    lengths are `round(median * exp(sigma * z))`, `z` standard normal, at least 1.
    Weights are relative; prompt and output are drawn independently (as measured
    on the real traces). Sigma 0 gives the median exactly.
    """

    def __init__(self, components: Sequence[tuple[float, float, float, float, float]]):
        comps = [tuple(float(x) for x in c) for c in components]
        if not comps:
            raise ValueError("invalid components: need at least one")
        for i, c in enumerate(comps):
            if len(c) != 5:
                raise ValueError(f"invalid components[{i}]: need 5 numbers, got {len(c)}")
            w, pm, ps, om, os_ = c
            if not all(math.isfinite(x) for x in c):
                raise ValueError(f"invalid components[{i}]: numbers must be finite, got {c}")
            if w <= 0 or pm <= 0 or om <= 0 or ps < 0 or os_ < 0:
                raise ValueError(
                    f"invalid components[{i}]: need weight > 0, medians > 0, sigmas >= 0, got {c}"
                )
        self.components: tuple[tuple[float, ...], ...] = tuple(comps)
        c = np.array(comps)
        self._weights = c[:, 0] / c[:, 0].sum()
        self._params = c[:, 1:]

    def __repr__(self) -> str:
        return f"LengthMixture({list(self.components)})"

    @classmethod
    def fixed(cls, prompt_tokens: int, output_tokens: int) -> LengthMixture:
        """Every request has exactly these lengths."""
        return cls([(1.0, prompt_tokens, 0.0, output_tokens, 0.0)])

    def sample(self, n: int, rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
        """`n` (prompt, output) length pairs as two int64 arrays."""
        which = rng.choice(len(self._weights), size=n, p=self._weights)
        pm, ps, om, os_ = self._params[which].T
        prompts = np.rint(pm * np.exp(ps * rng.standard_normal(n)))
        outputs = np.rint(om * np.exp(os_ * rng.standard_normal(n)))
        return np.maximum(prompts, 1).astype(np.int64), np.maximum(outputs, 1).astype(np.int64)


def gamma(
    rate: float, cv: float, duration_s: float, lengths: LengthMixture, seed: int = 0, name: str = "gamma"
) -> Trace:
    """Arrivals in [0, duration_s) with gamma inter-arrival gaps of mean `1 / rate` and
    coefficient of variation `cv` (1 is Poisson; above 1 is burstier)."""
    for field, value in (("rate", rate), ("cv", cv), ("duration_s", duration_s)):
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"invalid {field}: must be a finite number > 0, got {value!r}")
    rng = np.random.default_rng(seed)
    shape = 1.0 / cv**2
    scale = 1.0 / (rate * shape)
    chunks: list[np.ndarray] = []
    t = 0.0
    block = int(rate * duration_s * 1.1) + 16
    while t < duration_s:
        times = t + np.cumsum(rng.gamma(shape, scale, size=block))
        chunks.append(times)
        t = float(times[-1])
    arrivals = np.concatenate(chunks) if chunks else np.empty(0)
    arrivals = arrivals[arrivals < duration_s]
    prompts, outputs = lengths.sample(arrivals.size, rng)
    requests = [
        TraceRequest(a, p, o)
        for a, p, o in zip(arrivals.tolist(), prompts.tolist(), outputs.tolist(), strict=True)
    ]
    return Trace(requests, name=name, duration_s=float(duration_s))


def poisson(rate: float, duration_s: float, lengths: LengthMixture, seed: int = 0) -> Trace:
    """Poisson arrivals of mean `rate` per second in [0, duration_s)."""
    return gamma(rate, 1.0, duration_s, lengths, seed=seed, name="poisson")
