"""A decayed length histogram: what L4's DP partitions, learned from events.

Every event adds weight 1 at its time `now`; a weight added at time t counts
exp(-(now - t) / tau) at time `now`, tau = half_life / ln 2. Per bin of
`edges` it accumulates:
- arrivals and their prompt tokens (from `add_arrival`),
- decode tokens with the context they ran at, and growth crossings of the
  bin edges (from `add_decode`: a request of prompt p decoding its k-th token
  runs at context p + k, and crossing edge e counts when p < e <= p + k, the
  same accounting as `Workload.from_requests`),
- finished requests' output lengths, per prompt bin (from `add_finish`),
  for the remaining-tokens estimate.

Rates divide the decayed sums by the decayed observation time
tau * (1 - exp(-T / tau)), T = time since the first event, which is what a
constant-rate stream would have accumulated; so early estimates are not
biased low. Weights are stored scaled by exp((t - ref) / tau) and rescaled
when that factor grows large, so an event costs O(bins touched), not O(bins).
"""

from __future__ import annotations

import math
from bisect import bisect_right

import numpy as np

from l4_sglang.core import Workload

MIN_ROW_SAMPLES = 3.0
"""Decayed finished requests a prompt bin needs before its own output lengths
are used for the remaining-tokens estimate (else all bins pooled)."""

_RESIDUAL_CACHE = 4096  # remaining() results kept between finishes
_RESCALE_AT = 30.0  # exp(30) ~ 1e13: far from overflow, far from losing precision


class LengthHistogram:
    def __init__(self, edges: np.ndarray, half_life_s: float):
        self.edges = np.asarray(edges, dtype=np.float64)
        self._edge_list = self.edges.tolist()
        self.bins = self.edges.size - 1
        self._tau = half_life_s / math.log(2) if math.isfinite(half_life_s) else math.inf
        self._cap = float(np.nextafter(self.edges[-1], 0))
        b = self.bins
        self.count = np.zeros(b)
        self.prompt_sum = np.zeros(b)
        self.tokens = np.zeros(b)
        self.ctx_sum = np.zeros(b)
        self.growth = np.zeros(b)
        self.out_weight = np.zeros((b, b))
        self.out_sum = np.zeros((b, b))
        self.arrivals = 0
        """Undecayed counts of events seen."""
        self.finished = 0
        self._first: float | None = None
        self._residual: dict[tuple[int, int], float | None] = {}
        self._ref = 0.0
        self._last = -math.inf

    def bin_of(self, tokens: float) -> int:
        return min(max(bisect_right(self._edge_list, tokens) - 1, 0), self.bins - 1)

    def is_empty(self, a: float, b: float, share: float) -> bool:
        """Lengths [min(a, b), max(a, b)) hold at most `share` of the arrivals and of the decode
        tokens seen (decayed alike, so the time of asking does not matter)."""
        lo, hi = (a, b) if a <= b else (b, a)
        if lo == hi:
            return True
        first, last = self.bin_of(lo), self.bin_of(float(np.nextafter(hi, 0)))
        arrivals, tokens = self.count[first : last + 1], self.tokens[first : last + 1]
        return bool(arrivals.sum() <= share * self.count.sum() and tokens.sum() <= share * self.tokens.sum())

    def share(self, a: float, b: float, lo: float, hi: float) -> float:
        """The larger of the arrivals' and the decode tokens' share that lengths [a, b) hold of
        lengths [lo, hi); a bin's mass counts in proportion to its part inside the range (in log
        space, as the bins are laid out)."""
        arrivals, tokens = self._mass(a, b)
        all_arrivals, all_tokens = self._mass(lo, hi)
        return max(
            arrivals / all_arrivals if all_arrivals > 0 else 0.0,
            tokens / all_tokens if all_tokens > 0 else 0.0,
        )

    def _mass(self, a: float, b: float) -> tuple[float, float]:
        lo, hi = (a, b) if a <= b else (b, a)
        e = self.edges
        hi = min(hi, float(e[-1]))
        if not lo < hi:
            return 0.0, 0.0
        arrivals = tokens = 0.0
        for k in range(self.bin_of(lo), self.bin_of(float(np.nextafter(hi, 0))) + 1):
            x0, x1 = max(lo, e[k]), min(hi, e[k + 1])
            if x1 <= x0:
                continue
            # Log space as the bins are laid out; the first bin starts at 0, so linear there.
            part = math.log(x1 / x0) / math.log(e[k + 1] / e[k]) if e[k] > 0 else (x1 - x0) / e[k + 1]
            arrivals += part * self.count[k]
            tokens += part * self.tokens[k]
        return float(arrivals), float(tokens)

    def _weight(self, now: float) -> float:
        """Scaled weight of an event at `now` (time never runs backwards here)."""
        now = max(float(now), self._last)
        self._last = now
        if self._first is None:
            self._first = self._ref = now
        if math.isinf(self._tau):
            return 1.0
        x = (now - self._ref) / self._tau
        if x > _RESCALE_AT:
            f = math.exp(-x)
            for arr in (self.count, self.prompt_sum, self.tokens, self.ctx_sum, self.growth):
                arr *= f
            self.out_weight *= f
            self.out_sum *= f
            self._ref, x = now, 0.0
        return math.exp(x)

    def _decay(self, now: float) -> float:
        """Factor turning stored sums into decayed sums at `now`."""
        if math.isinf(self._tau):
            return 1.0
        return math.exp(-(max(now, self._last) - self._ref) / self._tau)

    def add_arrival(self, prompt: int, now: float) -> None:
        w = self._weight(now)
        b = self.bin_of(min(prompt, self._cap))
        self.count[b] += w
        self.prompt_sum[b] += w * min(prompt, self._cap)
        self.arrivals += 1

    def add_decode(self, prompt: int, before: int, after: int, now: float) -> None:
        """Tokens `before` .. `after` - 1 of a request of prompt `prompt` were decoded."""
        if after <= before:
            return
        c_lo = float(prompt + before)
        c_hi = min(float(prompt + after - 1), self._cap)
        if c_lo > c_hi:
            return
        w = self._weight(now)
        e = self._edge_list
        # Token k covers [p + k, p + k + 1) of the length axis, as in from_requests.
        for b in range(self.bin_of(c_lo), self.bin_of(c_hi + 1) + 1):
            lo, hi = max(e[b], c_lo), min(e[b + 1], c_hi + 1)
            if hi > lo:
                self.tokens[b] += w * (hi - lo)
                self.ctx_sum[b] += w * (hi - lo) * (lo + hi - 1) / 2
            if b > 0 and max(float(prompt), c_lo - 1) < e[b] <= c_hi:
                self.growth[b] += w

    def add_finish(self, prompt: int, output: int, now: float) -> None:
        w = self._weight(now)
        row, col = self.bin_of(prompt), self.bin_of(output)
        self.out_weight[row, col] += w
        self.out_sum[row, col] += w * output
        self.finished += 1
        self._residual.clear()

    def observed_s(self, now: float) -> float:
        """Decayed observation time at `now` (0 before the first event)."""
        if self._first is None:
            return 0.0
        t = max(now, self._last) - self._first
        return t if math.isinf(self._tau) else self._tau * -math.expm1(-t / self._tau)

    def workload(self, now: float) -> Workload | None:
        """Per-bin rates at `now`, or None before any time has passed or any arrival."""
        duration = self.observed_s(now)
        if duration <= 0 or not self.count.any():
            return None
        scale = self._decay(now) / duration
        lo, hi = self.edges[:-1], self.edges[1:]
        with np.errstate(invalid="ignore", divide="ignore"):
            prompt = np.where(self.count > 0, np.clip(self.prompt_sum / self.count, lo, hi), 0.0)
            ctx = np.where(self.tokens > 0, np.clip(self.ctx_sum / self.tokens, lo, hi), 0.0)
        growth = self.growth * scale
        growth[0] = 0.0
        return Workload(
            edges=self.edges,
            arrival_rate=self.count * scale,
            prompt_tokens=prompt,
            decode_rate=self.tokens * scale,
            decode_context=ctx,
            growth_rate=growth,
        )

    def remaining(self, prompt: int, generated: int) -> float | None:
        """Expected tokens still to come for a request that generated `generated`:
        the mean of (output - generated) over finished requests of its prompt bin
        whose output bins' means exceed `generated` (all prompt bins pooled when
        its bin has fewer than MIN_ROW_SAMPLES); None without such samples."""
        row = self.bin_of(prompt)
        key = (row, int(generated))
        if key not in self._residual:
            if len(self._residual) >= _RESIDUAL_CACHE:
                self._residual.clear()
            self._residual[key] = self._compute_remaining(row, int(generated))
        return self._residual[key]

    def _compute_remaining(self, row: int, generated: int) -> float | None:
        weight, total = self.out_weight[row], self.out_sum[row]
        if weight.sum() * self._decay(self._last) < MIN_ROW_SAMPLES:
            weight, total = self.out_weight.sum(axis=0), self.out_sum.sum(axis=0)
        with np.errstate(invalid="ignore", divide="ignore"):
            mask = (weight > 0) & (total > generated * weight)
        w = float(weight[mask].sum())
        if w <= 0:
            return None
        return (float(total[mask].sum()) - generated * w) / w
