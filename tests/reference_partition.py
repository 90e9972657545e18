"""Pure Python/numpy reference of the L4 DP partitioner.

Written from the module doc of `rust/src/partition.rs` (the SPEC) and the
step-time model of `rust/src/cost_model.rs`, without calling `l4_sglang._core`
or `l4_sglang.core` for any of the math: the only input taken from the package
is the parameter dict (`CostModel.params`). Where the Rust is an optimisation
of the spec, this file does the plain thing instead:

- prefill time is summed chunk by chunk (no closed form);
- the decode operating point is found by bisection on g(n) = n - demand * step(n)
  (no piecewise-linear solve);
- a stage's totals are loops over its bins (no prefix sums), and its TTFT
  violations are checked bin by bin (no binary search over a running max);
- the DP scans every (j, i, m), with no pruning; only the min over m for each
  k is vectorised with numpy.

`workload` is anything with the six per-bin attributes of `l4_sglang.Workload`
(edges, arrival_rate, prompt_tokens, decode_rate, decode_context, growth_rate);
`qoe` anything with the four fields of `l4_sglang.QoeConfig`.
"""

from __future__ import annotations

import itertools
import math
from dataclasses import dataclass

import numpy as np

INF = math.inf

# --------------------------------------------------------------------------
# Cost model (rust/src/cost_model.rs)
# --------------------------------------------------------------------------


def _round(x: float) -> float:
    """Rust's f64::round for x >= 0 (half away from zero, not Python's half-to-even)."""
    return float(math.floor(x + 0.5))


def linear_time(p: dict, tokens: float, requests: float, extends: bool = False) -> float:
    """Linear layers + per-step overhead + per-request work; 0 for an empty step. A step with a
    prefill item (`extends`) has the extend floor (absent: the decode floor)."""
    if requests <= 0:
        return 0.0
    floor = p["linear_floor_s"]
    if extends and p.get("extend_floor_s") is not None:
        floor = p["extend_floor_s"]
    return (
        p["overhead_s"]
        + max(floor, p["linear_per_token_s"] * tokens)
        + _heavy(p, tokens)
        + p["per_request_s"] * requests
    )


def _heavy(p: dict, tokens):
    """Extra linear-layer time of the tokens past linear_heavy_from_tokens (0 in older calibrations)."""
    excess = np.maximum(0.0, np.asarray(tokens, dtype=np.float64) - p.get("linear_heavy_from_tokens", 0.0))
    return p.get("linear_heavy_per_token_s", 0.0) * excess


def prefill_attention(p: dict, new_tokens: int, context: int) -> float:
    """Causal pairs within the chunk, plus pairs over the cached prefix (at their own price if given)."""
    context_pair = p.get("prefill_context_pair_s")
    if context_pair is None:
        context_pair = p["prefill_pair_s"]
    return p["prefill_pair_s"] * new_tokens * (new_tokens + 1) / 2 + context_pair * new_tokens * context


def decode_attention_time(p: dict, kv_tokens: float, max_kv: float) -> float:
    """decode_kv * (S + het_alpha * max(0, het_width * L - S))."""
    excess = max(0.0, p["het_width"] * max_kv - kv_tokens)
    return p["decode_kv_s"] * (kv_tokens + p["het_alpha"] * excess)


def decode_step_time(p: dict, requests: float, kv_tokens: float, max_kv: float) -> float:
    """Step time of a pure decode batch summary (requests, total KV read, longest KV read)."""
    return linear_time(p, requests, requests) + decode_attention_time(p, kv_tokens, max_kv)


def single_item_step_time(p: dict, new_tokens: int, context: int) -> float:
    """Step time of a batch holding exactly one item (one prefill chunk or one decode)."""
    if new_tokens <= 1:
        kv = context + new_tokens
        return decode_step_time(p, 1.0, kv, kv)
    return prefill_chunk_time(p, new_tokens, context)


def prefill_chunk_time(p: dict, new_tokens: int, context: int) -> float:
    """One prefill chunk alone: the extend kernel, even for a single token."""
    return linear_time(p, new_tokens, 1.0, extends=True) + prefill_attention(p, new_tokens, context)


def prefill_time(p: dict, prompt: float) -> float:
    """Prefill of `prompt` tokens alone, one step per chunk, summed chunk by chunk."""
    tokens = int(_round(prompt))
    if tokens <= 0:
        return 0.0
    chunk = int(max(_round(p["chunked_prefill_size"]), 1.0))
    total, done = 0.0, 0
    while done < tokens:
        new = min(chunk, tokens - done)
        total += prefill_chunk_time(p, new, done)
        done += new
    return total


def max_concurrency(p: dict, mean_kv: float) -> float:
    """Most requests of mean KV `mean_kv` one instance holds (KV or request limit, at least 1)."""
    by_kv = math.floor(p["kv_capacity_tokens"] / max(mean_kv, 1.0))
    return float(max(min(by_kv, p["max_running_requests"]), 1.0))


def decode_step_curve(p: dict, n, kv: float, max_kv: float):
    """Analytic decode step time of n (> 0) requests of mean KV `kv`, the longest `max_kv`.

    Equal to decode_step_time(p, n, n * kv, max_kv), written with numpy so that
    `n` may be an array.
    """
    n = np.asarray(n, dtype=np.float64)
    linear = p["overhead_s"] + np.maximum(p["linear_floor_s"], p["linear_per_token_s"] * n)
    linear = linear + _heavy(p, n) + p["per_request_s"] * n
    total_kv = n * kv
    attention = p["decode_kv_s"] * (
        total_kv + p["het_alpha"] * np.maximum(0.0, p["het_width"] * max_kv - total_kv)
    )
    return linear + attention


def solve_decode(p: dict, demand, kv: float, max_kv: float, rel_tol: float = 1e-13):
    """Smallest n in [0, n_cap] with n = demand * step(n), by bisection.

    g(n) = n - demand * step(n) is concave (step is convex), g(0) < 0, and
    n / step(n) rises with n, so g changes sign at most once on (0, n_cap]:
    bisection keeps `hi` where g >= 0 and `lo` where g < 0. Returns
    (n, step(n), ok) as arrays over `demand`; ok is False where g(n_cap) < 0.
    """
    demand = np.atleast_1d(np.asarray(demand, dtype=np.float64))
    n_cap = max_concurrency(p, kv)

    def g(n):
        return n - demand * decode_step_curve(p, n, kv, max_kv)

    ok = g(np.full_like(demand, n_cap)) >= 0.0
    lo = np.zeros_like(demand)
    hi = np.full_like(demand, n_cap)
    for _ in range(2000):
        if np.all(hi - lo <= rel_tol * hi):
            break
        mid = 0.5 * (lo + hi)
        if np.any((mid <= lo) | (mid >= hi)):  # adjacent doubles: nothing left to halve
            break
        root_below = g(mid) >= 0.0
        hi = np.where(root_below, mid, hi)
        lo = np.where(root_below, lo, mid)
    return hi, decode_step_curve(p, hi, kv, max_kv), ok


def max_decode_throughput(p: dict, kv: float, max_kv: float) -> float:
    """thr_cap: decode tokens/s of one instance at its largest batch."""
    n_cap = max_concurrency(p, kv)
    return n_cap / float(decode_step_curve(p, n_cap, kv, max_kv))


# --------------------------------------------------------------------------
# One stage (the module doc of rust/src/partition.rs)
# --------------------------------------------------------------------------


def queue_wait(rho, m, residual: float):
    """M/G/m wait (Sakasegawa): rho^(sqrt(2(m+1)) - 1) / (m (1 - rho)) * E[S^2] / (2 E[S]).

    Exact M/G/1 (Pollaczek-Khinchine) at m = 1. `residual` is E[S^2] / (2 E[S]).
    """
    rho = np.asarray(rho, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    return rho ** (np.sqrt(2.0 * (m + 1.0)) - 1.0) / (m * (1.0 - rho)) * residual


def overload_wait(rho, u: float, m, residual: float, horizon: float):
    """An overloaded stage's wait (rho >= u): queue_wait(u) plus its derivative at u times
    (rho - u), plus (rho - 1) * horizon / 2 past rho = 1 (the backlog's mean over the horizon)."""
    rho = np.asarray(rho, dtype=np.float64)
    m = np.asarray(m, dtype=np.float64)
    e = np.sqrt(2.0 * (m + 1.0)) - 1.0
    # d/drho of rho^e / (m (1 - rho)) = rho^(e-1) (e (1 - rho) + rho) / (m (1 - rho)^2)
    slope = u ** (e - 1.0) * (e * (1.0 - u) + u) / (m * (1.0 - u) ** 2) * residual
    return queue_wait(u, m, residual) + slope * (rho - u) + np.maximum(rho - 1.0, 0.0) * horizon / 2.0


@dataclass
class StageShape:
    """Everything about bins [j, i) that does not depend on the instance count."""

    j: int
    i: int
    lam: float  # arrivals whose prompt lands in the stage
    mig: float  # growth crossings of edges[j] (migrated in), 0 when j = 0
    mig_prefill: float  # prefill(edges[j]), what each migrated request recomputes
    prefill_work: float  # P
    residual: float  # E[S^2] / (2 E[S]) over the stage's prefill times
    decode_rate: float  # D
    mean_kv: float  # decode-weighted mean decode_context
    max_kv: float  # L = edges[h + 1], h the highest bin with decode_rate > 0
    work: float  # W = P + D / thr_cap


class Reference:
    """The spec, evaluated for one (params, workload, qoe)."""

    def __init__(self, params: dict, workload, qoe):
        self.p = dict(params)
        self.edges = [float(x) for x in np.asarray(workload.edges, dtype=np.float64)]
        self.arrival = [float(x) for x in np.asarray(workload.arrival_rate, dtype=np.float64)]
        self.prompt = [float(x) for x in np.asarray(workload.prompt_tokens, dtype=np.float64)]
        self.decode = [float(x) for x in np.asarray(workload.decode_rate, dtype=np.float64)]
        self.context = [float(x) for x in np.asarray(workload.decode_context, dtype=np.float64)]
        self.growth = [float(x) for x in np.asarray(workload.growth_rate, dtype=np.float64)]
        self.bins = len(self.edges) - 1
        self.slo_ttft = float(qoe.slo_ttft_s)
        self.slo_tpot = float(qoe.slo_tpot_s)
        self.penalty = float(qoe.slo_penalty_s)
        self.max_util = float(qoe.max_utilization)
        self.horizon = float(getattr(qoe, "overload_horizon_s", 0.0))
        # prefill(prompt_tokens[b]) of each bin, as the spec reads (no running max).
        self.prefill = [prefill_time(self.p, x) for x in self.prompt]
        self._shapes: dict[tuple[int, int], StageShape] = {}

    def shape(self, j: int, i: int) -> StageShape:
        key = (j, i)
        if key not in self._shapes:
            self._shapes[key] = self._shape(j, i)
        return self._shapes[key]

    def _shape(self, j: int, i: int) -> StageShape:
        assert 0 <= j < i <= self.bins
        lam = 0.0
        prefill_arrivals = 0.0
        prefill_square = 0.0
        decode_rate = 0.0
        decode_ctx = 0.0
        top = None
        for b in range(j, i):
            lam += self.arrival[b]
            if self.arrival[b] > 0:
                prefill_arrivals += self.arrival[b] * self.prefill[b]
                prefill_square += self.arrival[b] * self.prefill[b] ** 2
            decode_rate += self.decode[b]
            decode_ctx += self.decode[b] * self.context[b]
            if self.decode[b] > 0:
                top = b
        mig = self.growth[j] if j > 0 else 0.0
        mig_prefill = prefill_time(self.p, self.edges[j]) if mig > 0 else 0.0
        prefill_work = prefill_arrivals + mig * mig_prefill
        # E[S^2] / E[S] = (sum arrival_rate * prefill^2 + mig * prefill(edges[j])^2) / P
        second_moment = prefill_square + mig * mig_prefill**2
        residual = second_moment / prefill_work / 2.0 if prefill_work > 0 else 0.0
        mean_kv = max_kv = 0.0
        work = prefill_work
        if decode_rate > 0:
            mean_kv = decode_ctx / decode_rate
            # The cost model never lets the longest read be shorter than the mean
            # (DecodeCurve / decode_throughput take max(max_kv, mean_kv)).
            max_kv = max(self.edges[top + 1], mean_kv)
            work += decode_rate / max_decode_throughput(self.p, mean_kv, max_kv)
        return StageShape(
            j, i, lam, mig, mig_prefill, prefill_work, residual, decode_rate, mean_kv, max_kv, work
        )

    def excess(self, j: int, i: int, m) -> np.ndarray:
        """max(0, W - m * max_utilization), over an array of instance counts."""
        m = np.atleast_1d(np.asarray(m, dtype=np.float64))
        return np.maximum(0.0, self.shape(j, i).work - m * self.max_util)

    def costs(self, j: int, i: int, m) -> np.ndarray:
        """Stage cost of bins [j, i) on each instance count in `m` (inf where infeasible)."""
        s = self.shape(j, i)
        m = np.atleast_1d(np.asarray(m, dtype=np.float64))
        entering = s.lam + s.mig
        if entering <= 0 and s.decode_rate <= 0:
            return np.zeros_like(m)  # a stage with no traffic costs 0
        cost = np.full_like(m, INF)
        rho = s.work / m
        over = rho >= self.max_util
        # Overloaded stages have a price only with an overload horizon.
        priced_mask = ~over | (self.horizon > 0)
        if not np.any(priced_mask):
            return cost
        mf = m[priced_mask]
        rho = rho[priced_mask]
        over = over[priced_mask]
        # Overloaded, prefill and decode keep their shares of the time the stage has.
        share = np.where(over, self.max_util / np.maximum(rho, self.max_util), 1.0)
        busy = 1.0 - s.prefill_work / mf * share  # 1 - u_p
        tpot = np.zeros_like(mf)
        if s.decode_rate > 0:
            # Unsolved (demand beyond the largest batch), the step is the one at n_cap.
            _, step, solved = solve_decode(self.p, s.decode_rate / mf / busy, s.mean_kv, s.max_kv)
            tpot = step / busy
            # Cannot happen while rho < max_utilization < 1; priced as infeasible if it does.
            rho = np.where(solved | over, rho, np.nan)
        safe = np.where(over, 0.5, rho)
        wait = np.where(
            over,
            overload_wait(rho, self.max_util, mf, s.residual, self.horizon),
            queue_wait(safe, mf, s.residual),
        )
        latency = s.mig * (wait + s.mig_prefill) + s.decode_rate * tpot
        violations = np.zeros_like(mf)
        for b in range(j, i):
            if self.arrival[b] > 0:
                ttft = wait + self.prefill[b]
                latency = latency + self.arrival[b] * ttft
                violations = violations + np.where(ttft > self.slo_ttft, self.arrival[b], 0.0)
        if s.decode_rate > 0:
            violations = violations + np.where(tpot > self.slo_tpot, entering, 0.0)
        total = latency + self.penalty * violations
        cost[priced_mask] = np.where(np.isnan(total), INF, total)
        return cost

    def layout_cost(self, layout) -> float:
        """Total cost of [(first_bin, end_bin, instances), ...]."""
        return float(sum(self.costs(j, i, m)[0] for j, i, m in layout))

    def layout_excess(self, layout) -> float:
        return float(sum(self.excess(j, i, m)[0] for j, i, m in layout))

    def dp(self, instances: int, excess_mode: bool = False):
        """f[i][k] = min over j < i, 1 <= m <= k of f[j][k - m] + cost(j, i, m).

        Scans j ascending and, for each k, m ascending, keeping the first strict
        minimum. Returns (f[B][N], layout), layout None when f[B][N] is inf.
        """
        n, bins = instances, self.bins
        f = np.full((bins + 1, n + 1), INF)
        f[0, 0] = 0.0
        choice_j = np.full((bins + 1, n + 1), -1)
        choice_m = np.full((bins + 1, n + 1), -1)
        ks = np.arange(n + 1)[:, None]
        ms = np.arange(n + 1)[None, :]
        valid = (ms >= 1) & (ms <= ks)  # [k, m]: a stage of m instances fits in k
        prev = np.where(valid, ks - ms, 0)  # index of f[j][k - m]
        m_all = np.arange(1, n + 1)
        for i in range(1, bins + 1):
            for j in range(i):
                stage = np.full(n + 1, INF)  # stage[m], m = 0 never used
                stage[1:] = self.excess(j, i, m_all) if excess_mode else self.costs(j, i, m_all)
                cand = np.where(valid, f[j][prev] + stage[ms], INF)  # cand[k, m]
                m_best = np.argmin(cand, axis=1)  # first minimum over m ascending
                best = cand[np.arange(n + 1), m_best]
                better = best < f[i]  # strict: an earlier j keeps ties
                f[i][better] = best[better]
                choice_j[i][better] = j
                choice_m[i][better] = m_best[better]
        total = float(f[bins, n])
        if not math.isfinite(total):
            return INF, None
        layout = []
        i, k = bins, n
        while i > 0:
            j, m = int(choice_j[i, k]), int(choice_m[i, k])
            layout.append((j, i, m))
            i, k = j, k - m
        assert k == 0
        return total, layout[::-1]


# --------------------------------------------------------------------------
# Public functions
# --------------------------------------------------------------------------


def stage_cost(params: dict, workload, qoe, j: int, i: int, m: int) -> tuple[float, float]:
    """(cost, excess) of bins [j, i) on m instances; cost is inf when infeasible."""
    ref = Reference(params, workload, qoe)
    return float(ref.costs(j, i, m)[0]), float(ref.excess(j, i, m)[0])


def stage_work(params: dict, workload, j: int, i: int) -> float:
    """W of bins [j, i) (instance-seconds per second), independent of the QoE."""

    class _Any:
        slo_ttft_s = slo_tpot_s = slo_penalty_s = max_utilization = 1.0

    return Reference(params, workload, _Any()).shape(j, i).work


def reference_partition(
    params: dict, workload, instances: int, qoe
) -> tuple[float, list[tuple[int, int, int]]]:
    """(total_cost, [(first_bin, end_bin, instances), ...]) of the exact DP.

    When no layout is feasible, total_cost is inf and the layout is the one of
    least excess work (the overload fallback pass).
    """
    ref = Reference(params, workload, qoe)
    total, layout = ref.dp(instances)
    if layout is not None:
        return total, layout
    _, layout = ref.dp(instances, excess_mode=True)
    assert layout is not None, "one stage on every instance is always a layout"
    return INF, layout


def reference_min_excess(
    params: dict, workload, instances: int, qoe
) -> tuple[float, list[tuple[int, int, int]]]:
    """(least total excess work, its layout): the overload fallback pass alone."""
    return Reference(params, workload, qoe).dp(instances, excess_mode=True)


def compositions(total: int, parts: int):
    """Every tuple of `parts` positive integers summing to `total`."""
    for bars in itertools.combinations(range(1, total), parts - 1):
        edges = (0, *bars, total)
        yield tuple(edges[s + 1] - edges[s] for s in range(parts))


def all_layouts(bins: int, instances: int):
    """Every layout: every subset of cut points, every composition of N into K parts."""
    for mask in range(1 << (bins - 1)):
        cuts = [0] + [b for b in range(1, bins) if mask & (1 << (b - 1))] + [bins]
        k = len(cuts) - 1
        if k > instances:
            continue
        for counts in compositions(instances, k):
            yield [(cuts[s], cuts[s + 1], counts[s]) for s in range(k)]


def brute_force(params: dict, workload, instances: int, qoe) -> float:
    """Least total cost over all layouts (inf when none is feasible)."""
    ref = Reference(params, workload, qoe)
    table = {}  # (j, i) -> cost over m = 1..N, each stage priced once
    m_all = np.arange(1, instances + 1)
    best = INF
    for layout in all_layouts(ref.bins, instances):
        total = 0.0
        for j, i, m in layout:
            if (j, i) not in table:
                table[(j, i)] = ref.costs(j, i, m_all)
            total += float(table[(j, i)][m - 1])
        best = min(best, total)
    return best


# --------------------------------------------------------------------------
# Instance classes: a mixed pool, each stage on instances of one class
# --------------------------------------------------------------------------


def reference_partition_classes(
    classes: list[tuple[dict, int]], workload, qoe, excess_mode: bool = False
) -> tuple[float, list[tuple[int, int, int, int]] | None]:
    """(total, [(first_bin, end_bin, instances, class), ...]) of the plain DP over
    f[i][(k_1, .., k_C)]: every class's instances used exactly, no pruning.

    With `excess_mode` it minimises the excess work instead (the overload pass);
    without, it falls back to that pass (total inf) when no layout is feasible.
    """
    refs = [Reference(p, workload, qoe) for p, _ in classes]
    counts = tuple(n for _, n in classes)
    bins = refs[0].bins
    f: list[dict[tuple[int, ...], float]] = [{} for _ in range(bins + 1)]
    choice: list[dict[tuple[int, ...], tuple[int, int, int]]] = [{} for _ in range(bins + 1)]
    f[0][(0,) * len(counts)] = 0.0
    for i in range(1, bins + 1):
        for j in range(i):
            for c, ref in enumerate(refs):
                ms = np.arange(1, counts[c] + 1)
                stage = ref.excess(j, i, ms) if excess_mode else ref.costs(j, i, ms)
                for k, base in list(f[j].items()):
                    for m in range(1, counts[c] - k[c] + 1):
                        v = base + float(stage[m - 1])
                        if not math.isfinite(v):
                            continue
                        t = tuple(x + m if d == c else x for d, x in enumerate(k))
                        if v < f[i].get(t, INF):
                            f[i][t] = v
                            choice[i][t] = (j, c, m)
    total = f[bins].get(counts, INF)
    if not math.isfinite(total):
        if excess_mode:
            return INF, None
        _, layout = reference_partition_classes(classes, workload, qoe, excess_mode=True)
        return INF, layout
    layout = []
    i, k = bins, counts
    while i > 0:
        j, c, m = choice[i][k]
        layout.append((j, i, m, c))
        k = tuple(x - m if d == c else x for d, x in enumerate(k))
        i = j
    return total, layout[::-1]


def layout_cost_classes(classes: list[tuple[dict, int]], workload, qoe, layout) -> tuple[float, float]:
    """(total cost, total excess) of [(first_bin, end_bin, instances, class), ...]."""
    refs = [Reference(p, workload, qoe) for p, _ in classes]
    cost = sum(float(refs[c].costs(j, i, m)[0]) for j, i, m, c in layout)
    excess = sum(float(refs[c].excess(j, i, m)[0]) for j, i, m, c in layout)
    return cost, excess


def brute_force_classes(classes: list[tuple[dict, int]], workload, qoe) -> tuple[float, float]:
    """(least total cost, least total excess) over every mixed layout: every cut
    set, every class per stage, every split of each class over its stages."""
    refs = [Reference(p, workload, qoe) for p, _ in classes]
    counts = [n for _, n in classes]
    bins = refs[0].bins
    tables: dict[tuple[int, int, int], tuple[np.ndarray, np.ndarray]] = {}

    def table(c: int, j: int, i: int) -> tuple[np.ndarray, np.ndarray]:
        if (c, j, i) not in tables:
            ms = np.arange(1, counts[c] + 1)
            tables[(c, j, i)] = (refs[c].costs(j, i, ms), refs[c].excess(j, i, ms))
        return tables[(c, j, i)]

    best, least = INF, INF
    for mask in range(1 << (bins - 1)):
        cuts = [0] + [b for b in range(1, bins) if mask & (1 << (b - 1))] + [bins]
        k = len(cuts) - 1
        for labels in itertools.product(range(len(classes)), repeat=k):
            per_class = [[s for s in range(k) if labels[s] == c] for c in range(len(classes))]
            if any(len(stages) > counts[c] or (not stages) for c, stages in enumerate(per_class)):
                continue
            splits = [list(compositions(counts[c], len(per_class[c]))) for c in range(len(classes))]
            for chosen in itertools.product(*splits):
                m = [0] * k
                for c, split in enumerate(chosen):
                    for s, count in zip(per_class[c], split, strict=True):
                        m[s] = count
                cost = excess = 0.0
                for s in range(k):
                    costs, excesses = table(labels[s], cuts[s], cuts[s + 1])
                    cost += float(costs[m[s] - 1])
                    excess += float(excesses[m[s] - 1])
                best, least = min(best, cost), min(least, excess)
    return best, least
