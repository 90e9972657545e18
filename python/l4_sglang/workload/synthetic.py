"""Seeded synthetic traces: Poisson or gamma arrivals with lognormal length mixtures.

`gamma` and `poisson` draw one stationary mixture; `phased` strings phases of their own rate and
mixture together (a workload whose length distribution shifts over time). `synthetic_trace`
builds the named workloads the bench's `synth` and `suite` commands use (`SYNTHETIC_KINDS`).
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

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

    def mean_prompt(self) -> float:
        """Expected prompt length (lognormal means; the rounding and the floor of 1 left out)."""
        pm, ps = self._params[:, 0], self._params[:, 1]
        return float(np.sum(self._weights * pm * np.exp(ps**2 / 2)))

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
    _check_positive(rate=rate, cv=cv, duration_s=duration_s)
    rng = np.random.default_rng(seed)
    arrivals = _gamma_arrivals(rng, rate, cv, duration_s)
    prompts, outputs = lengths.sample(arrivals.size, rng)
    return Trace(_requests(arrivals, prompts, outputs), name=name, duration_s=float(duration_s))


def _check_positive(**values: float) -> None:
    for field, value in values.items():
        if not (isinstance(value, (int, float)) and math.isfinite(value) and value > 0):
            raise ValueError(f"invalid {field}: must be a finite number > 0, got {value!r}")


def _gamma_arrivals(rng: np.random.Generator, rate: float, cv: float, duration_s: float) -> np.ndarray:
    """Arrival times in [0, duration_s), gamma gaps of mean 1 / rate and coefficient of variation cv."""
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
    return arrivals[arrivals < duration_s]


def _requests(arrivals: np.ndarray, prompts: np.ndarray, outputs: np.ndarray) -> list[TraceRequest]:
    return [
        TraceRequest(a, p, o)
        for a, p, o in zip(arrivals.tolist(), prompts.tolist(), outputs.tolist(), strict=True)
    ]


def poisson(rate: float, duration_s: float, lengths: LengthMixture, seed: int = 0) -> Trace:
    """Poisson arrivals of mean `rate` per second in [0, duration_s)."""
    return gamma(rate, 1.0, duration_s, lengths, seed=seed, name="poisson")


@dataclass(frozen=True)
class Phase:
    """A stretch of a phased trace: `duration_s` seconds of arrivals at `rate` per second, lengths
    from `lengths`."""

    duration_s: float
    rate: float
    lengths: LengthMixture


def phased(phases: Sequence[Phase], cv: float = 1.0, seed: int = 0, name: str = "phased") -> Trace:
    """Phases one after another: phase i covers [start_i, start_i + duration_i), start_0 = 0, with
    gamma arrivals (coefficient of variation `cv`, restarted at each phase start) and its own
    length mixture. One `numpy.random.default_rng(seed)` draws every phase in order (arrivals,
    then lengths), so the same phases and seed give the same trace; `duration_s` is the sum."""
    if not phases:
        raise ValueError("invalid phases: need at least one")
    _check_positive(cv=cv)
    for i, ph in enumerate(phases):
        try:
            _check_positive(duration_s=ph.duration_s, rate=ph.rate)
        except ValueError as e:
            raise ValueError(f"invalid phases[{i}]: {e}") from None
    rng = np.random.default_rng(seed)
    requests: list[TraceRequest] = []
    start = 0.0
    for ph in phases:
        arrivals = start + _gamma_arrivals(rng, ph.rate, cv, ph.duration_s)
        arrivals = arrivals[arrivals < start + ph.duration_s]  # float rounding at the edge
        prompts, outputs = ph.lengths.sample(arrivals.size, rng)
        requests += _requests(arrivals, prompts, outputs)
        start += ph.duration_s
    return Trace(requests, name=name, duration_s=start)


OUTPUT_MEDIAN, OUTPUT_SIGMA = 256, 0.6
"""Output lengths of the named workloads: lognormal, drawn independently of the prompt (as measured
on the real traces)."""


def bimodal_mixture(long_share: float = 0.03, short: int = 1024, long: int = 61440) -> LengthMixture:
    """Chat-length prompts (median `short`, sigma 0.3) and a `long_share` of documents (median `long`,
    sigma 0.1)."""
    if not 0 < long_share < 1:
        raise ValueError(f"invalid long_share: must be in (0, 1), got {long_share!r}")
    return LengthMixture(
        [
            (1 - long_share, short, 0.3, OUTPUT_MEDIAN, OUTPUT_SIGMA),
            (long_share, long, 0.1, OUTPUT_MEDIAN, OUTPUT_SIGMA),
        ]
    )


def trimodal_mixture(
    shares: Sequence[float] = (0.85, 0.12, 0.03), medians: Sequence[int] = (1024, 8192, 49152)
) -> LengthMixture:
    """Three prompt modes (chat, RAG, documents), each lognormal with sigma 0.2."""
    if len(shares) != 3 or len(medians) != 3:
        raise ValueError("invalid trimodal mixture: need 3 shares and 3 medians")
    return LengthMixture(
        [(w, m, 0.2, OUTPUT_MEDIAN, OUTPUT_SIGMA) for w, m in zip(shares, medians, strict=True)]
    )


def lognormal_mixture(median: int = 1500, sigma: float = 1.3) -> LengthMixture:
    """One lognormal with a long tail: sigma 1.3 puts p99 at about 20x the median, p99.9 at 55x."""
    return LengthMixture([(1.0, median, sigma, OUTPUT_MEDIAN, OUTPUT_SIGMA)])


def shifting_phases(
    rate: float,
    duration_s: float,
    long_share: float = 0.01,
    doc_share: float = 0.3,
    long: int = 32768,
) -> list[Phase]:
    """Chat-heavy, document-heavy, chat-heavy again, a third of `duration_s` each: prompts from
    `bimodal_mixture(share, long=long)` with `long_share` of documents in the chat phases and
    `doc_share` in the document phase. The chat phases arrive at `rate`; the document phase at the
    rate that carries the same prompt tokens per second (`rate * mean_prompt(chat) /
    mean_prompt(doc)`), so the offered token load stays level while the length mix shifts."""
    _check_positive(rate=rate, duration_s=duration_s)
    chat = bimodal_mixture(long_share, long=long)
    doc = bimodal_mixture(doc_share, long=long)
    third = duration_s / 3
    doc_rate = rate * chat.mean_prompt() / doc.mean_prompt()
    return [Phase(third, rate, chat), Phase(third, doc_rate, doc), Phase(third, rate, chat)]


SYNTHETIC_KINDS = ("bimodal", "trimodal", "lognormal", "nonstationary")
"""The named synthetic workloads of `synthetic_trace`."""

STATIONARY_KINDS = ("bimodal", "trimodal", "lognormal")


def synthetic_trace(
    kind: str,
    rate: float,
    duration_s: float,
    seed: int = 0,
    cv: float = 1.0,
    long_share: float | None = None,
    doc_share: float | None = None,
    max_context: int | None = 131072,
) -> Trace:
    """A named synthetic workload (`SYNTHETIC_KINDS`), seeded:

    - bimodal: `bimodal_mixture(long_share or 0.03)` (1K chat, 60K documents);
    - trimodal: `trimodal_mixture()` (1K / 8K / 48K at 85 / 12 / 3 %);
    - lognormal: `lognormal_mixture()` (median 1.5K, sigma 1.3);
    - nonstationary: `shifting_phases(rate, duration_s, long_share or 0.01, doc_share or 0.3)`.

    `rate` is requests per second (for nonstationary, of its chat phases). Requests longer than
    `max_context` (prompt + output) are cut to fit by `cap_lengths` (None: not cut).
    """
    from l4_sglang.workload.transform import cap_lengths

    if kind not in SYNTHETIC_KINDS:
        raise ValueError(f"unknown synthetic workload {kind!r}; known: {', '.join(SYNTHETIC_KINDS)}")
    if doc_share is not None and kind != "nonstationary":
        raise ValueError("doc_share is for the nonstationary workload")
    if long_share is not None and kind not in ("bimodal", "nonstationary"):
        raise ValueError("long_share is for the bimodal and nonstationary workloads")
    if kind == "nonstationary":
        phases = shifting_phases(
            rate,
            duration_s,
            0.01 if long_share is None else long_share,
            0.3 if doc_share is None else doc_share,
        )
        trace = phased(phases, cv=cv, seed=seed, name=kind)
    else:
        mix = {
            "bimodal": lambda: bimodal_mixture(0.03 if long_share is None else long_share),
            "trimodal": trimodal_mixture,
            "lognormal": lognormal_mixture,
        }[kind]()
        trace = gamma(rate, cv, duration_s, mix, seed=seed, name=kind)
    return cap_lengths(trace, max_context) if max_context is not None else trace
