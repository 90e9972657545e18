"""The static-oracle baseline: the best static length split of a whole trace.

What an operator who hand-tunes SGLang's static length buckets could at best set, given the whole
trace in advance: `static_buckets` layouts (boundaries and workers per bucket) swept in the
simulator on the very requests they are then scored on. It is the bar for stationary workloads;
on a mix that shifts over time, any one static split is wrong part of the time.

The sweep, with `simulate` calls as the unit of cost:
1. candidate boundaries: prompt-length quantiles and a log grid, each cutting the trace in two;
2. every one-boundary layout (and, with `max_buckets=3`, every pair of the five best boundaries),
   its workers split in proportion to each bucket's tokens;
3. from the best few, a hill climb that moves instances between neighbouring buckets (steps of
   about N/8, then 1) while the objective improves.
The objective is completed requests first, then mean E2E. This is a search, not an exhaustive
enumeration: `tried` lists every layout simulated, so a reader can see how far it looked.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from itertools import combinations
from typing import Any

import numpy as np

from l4_sglang.core import CostModel
from l4_sglang.sim import SimResult, simulate

Layout = tuple[tuple[int, ...], tuple[int, ...]]
"""(boundaries, instances per bucket)."""

QUANTILES = (0.5, 0.7, 0.8, 0.9, 0.95, 0.97, 0.98, 0.99, 0.995)
LOG_GRID = tuple(1024 * 2**i for i in range(8))  # 1K .. 128K


@dataclass(frozen=True)
class Candidate:
    boundaries: tuple[int, ...]
    instances: tuple[int, ...]
    completed: int
    mean_e2e_s: float
    p99_e2e_s: float

    def key(self) -> tuple[int, float]:
        return (-self.completed, self.mean_e2e_s)

    def overrides(self) -> dict[str, Any]:
        return {"boundaries": self.boundaries, "instances": self.instances}

    def label(self) -> str:
        cuts = ",".join(str(b) for b in self.boundaries)
        return f"boundaries {cuts}, instances {'+'.join(map(str, self.instances))}"


@dataclass(frozen=True)
class OracleSearch:
    best: Candidate
    best_result: SimResult
    tried: tuple[Candidate, ...]


def _round2(x: float) -> int:
    """Two significant digits: a boundary an operator would write."""
    if x < 10:
        return max(1, round(x))
    e = 10 ** (math.floor(math.log10(x)) - 1)
    return int(round(x / e) * e)


def candidate_boundaries(prompts: Sequence[int]) -> list[int]:
    """Boundaries that each leave requests on both sides, from quantiles and a log grid."""
    arr = np.sort(np.asarray(prompts, dtype=np.int64))
    if arr.size == 0:
        return []
    values = {_round2(float(np.quantile(arr, q))) for q in QUANTILES} | set(LOG_GRID)
    out, seen = [], set()
    for b in sorted(values):
        below = int(np.searchsorted(arr, b, side="left"))  # prompts < b go below
        if 0 < below < arr.size and below not in seen:  # same cut as a smaller boundary: skip
            seen.add(below)
            out.append(b)
    return out


def proportional_instances(prompts: np.ndarray, tokens: np.ndarray, boundaries: Sequence[int], n: int):
    """Workers per bucket in proportion to each bucket's tokens (each bucket >= 1)."""
    k = len(boundaries) + 1
    if n < k:
        return None
    bucket = np.searchsorted(np.asarray(boundaries), prompts, side="right")
    share = np.array([tokens[bucket == i].sum() for i in range(k)], dtype=float)
    share = share / share.sum() if share.sum() > 0 else np.full(k, 1 / k)
    counts = np.maximum(1, np.floor(share * n).astype(int))
    while counts.sum() > n:
        counts[int(np.argmax(counts))] -= 1
    while counts.sum() < n:
        counts[int(np.argmax(share * n - counts))] += 1
    return tuple(int(c) for c in counts)


def _neighbours(instances: tuple[int, ...], step: int) -> list[tuple[int, ...]]:
    out = []
    for i in range(len(instances) - 1):
        for src, dst in ((i, i + 1), (i + 1, i)):
            if instances[src] - step >= 1:
                moved = list(instances)
                moved[src] -= step
                moved[dst] += step
                out.append(tuple(moved))
    return out


def search(
    requests: Sequence[Any],
    cost_model: CostModel,
    instances: int,
    *,
    seed: int = 0,
    max_buckets: int = 2,
    climb_from: int = 3,
    progress: Callable[[str], None] | None = None,
    **sim_kwargs: Any,
) -> OracleSearch:
    """The best static_buckets layout for `requests` on `instances` simulated workers."""
    if instances < 2:
        raise ValueError("a static split needs at least 2 instances")
    if max_buckets not in (2, 3):
        raise ValueError(f"max_buckets must be 2 or 3, got {max_buckets}")
    prompts = np.array([r.prompt_tokens for r in requests], dtype=np.int64)
    tokens = prompts + np.array([r.output_tokens for r in requests], dtype=np.int64)
    tried: dict[Layout, Candidate] = {}
    results: dict[Layout, SimResult] = {}

    def score(boundaries: tuple[int, ...], counts: tuple[int, ...]) -> Candidate:
        layout = (boundaries, counts)
        if layout not in tried:
            res = simulate(
                requests,
                "static_buckets",
                cost_model,
                instances,
                seed=seed,
                policy_overrides={"boundaries": boundaries, "instances": counts},
                **sim_kwargs,
            )
            e2e = [r.e2e_s for r in res.records if r.finished_s is not None]
            cand = Candidate(
                boundaries,
                counts,
                len(e2e),
                float(np.mean(e2e)) if e2e else math.inf,
                float(np.percentile(e2e, 99)) if e2e else math.inf,
            )
            tried[layout], results[layout] = cand, res
            if progress:
                best = min(tried.values(), key=Candidate.key)
                progress(
                    f"{len(tried)} layouts simulated; best so far {best.label()}: {best.mean_e2e_s:.3g} s"
                )
        return tried[layout]

    cuts = candidate_boundaries(prompts)
    if not cuts:
        raise ValueError("every request has the same prompt length: no static split separates them")
    singles = []
    for b in cuts:
        counts = proportional_instances(prompts, tokens, (b,), instances)
        singles.append(score((b,), counts))
    starts = sorted(singles, key=Candidate.key)
    if max_buckets == 3 and instances >= 3:
        top = sorted(c.boundaries[0] for c in starts[:5])
        for pair in combinations(top, 2):
            counts = proportional_instances(prompts, tokens, pair, instances)
            starts.append(score(pair, counts))
        starts.sort(key=Candidate.key)

    for start in starts[:climb_from]:
        here = start
        for step in sorted({max(1, instances // 8), 1}, reverse=True):
            improved = True
            while improved:
                improved = False
                for counts in _neighbours(here.instances, step):
                    cand = score(here.boundaries, counts)
                    if cand.key() < here.key():
                        here, improved = cand, True
    best = min(tried.values(), key=Candidate.key)
    return OracleSearch(best, results[(best.boundaries, best.instances)], tuple(tried.values()))


__all__ = ["Candidate", "OracleSearch", "candidate_boundaries", "proportional_instances", "search"]
