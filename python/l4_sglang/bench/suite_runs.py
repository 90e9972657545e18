"""The suite's runs: knees and (workload, load, seed, policy) simulations, in this process or in a
pool of worker processes, assembled into cells as they finish (`bench/suite.py`'s docstring)."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait

import numpy as np

from l4_sglang.bench import static_oracle
from l4_sglang.bench.cli import ORACLE
from l4_sglang.bench.knee import KneeNotFound, find_knee
from l4_sglang.bench.suite_config import LOADS, NONSTATIONARY, Settings, base_trace
from l4_sglang.bench.suite_report import bar, fmt_s, fmt_x, verdict
from l4_sglang.sim import SimResult, simulate
from l4_sglang.workload import scale_rate
from l4_sglang.workload.trace import Trace


def _metrics(res: SimResult) -> dict:
    e2e = np.array([r.e2e_s for r in res.completed])
    return {
        "completed": int(e2e.size),
        "requests": len(res.records),
        "mean_e2e_ms": float(e2e.mean() * 1000) if e2e.size else None,
        "p99_e2e_ms": float(np.percentile(e2e, 99) * 1000) if e2e.size else None,
        "migrations": res.summary().get("migrations"),
    }


def run_policy(pol: str, trace: Trace, seed: int, s: Settings) -> dict:
    if pol == ORACLE:
        found = static_oracle.search(
            trace.requests, s.model, s.instances, seed=seed, max_buckets=s.oracle_buckets
        )
        out = _metrics(found.best_result)
        out["static_split"] = {
            "boundaries": list(found.best.boundaries),
            "instances": list(found.best.instances),
            "layouts_simulated": len(found.tried),
        }
        return out
    res = simulate(trace, pol, s.model, s.instances, seed=seed, policy_overrides=s.knobs.get(pol))
    return _metrics(res)


def _mean(values):
    values = [v for v in values if v is not None]
    return float(np.mean(values)) if values else None


def _log(workload: str, quiet: bool) -> Callable[[str], None]:
    def log(line: str) -> None:
        if not quiet:
            sys.stderr.write(f"[suite {workload}] {line}\n")
            sys.stderr.flush()

    return log


def knee_task(workload: str, s: Settings) -> dict:
    """Round robin's knee of `workload` on the first seed's trace, timed."""
    t0 = time.monotonic()
    knee = find_knee(base_trace(workload, s.seeds[0], s), s, _log(workload, s.quiet))
    knee["wall_s"] = time.monotonic() - t0
    return knee


_TRACES: dict[tuple, Trace] = {}


def _cached_trace(workload: str, seed: int, s: Settings) -> Trace:
    key = (workload, seed, s.requests, str(s.traces_dir))
    if key not in _TRACES:
        _TRACES[key] = base_trace(workload, seed, s)
    return _TRACES[key]


def policy_task(workload: str, seed: int, scale: float, pol: str, s: Settings) -> dict:
    """One policy on one seed's trace of `workload` at rate scale `scale`, timed."""
    t0 = time.monotonic()
    m = run_policy(pol, scale_rate(_cached_trace(workload, seed, s), scale), seed, s)
    m["seed"] = seed
    m["wall_s"] = time.monotonic() - t0
    return m


def assemble_cell(
    workload: str,
    load: str,
    scale: float,
    traces: dict[int, Trace],
    runs: dict[tuple[int, str], dict],
    s: Settings,
) -> dict:
    """A cell's record from its per-(seed, policy) runs: seed means, per-seed numbers, the bar."""
    base = traces[s.seeds[0]]
    cell = {
        "workload": workload,
        "load": load,
        "load_multiple": LOADS[load],
        "rate_scale": scale,
        "rate_req_s": scale * base.mean_rate,
        "requests": {str(seed): len(traces[seed]) for seed in s.seeds},
        "policies": {},
    }
    for p in s.policies:
        per_seed = [runs[(seed, p)] for seed in s.seeds]
        cell["policies"][p] = {
            "mean_e2e_ms": _mean([m["mean_e2e_ms"] for m in per_seed]),
            "p99_e2e_ms": _mean([m["p99_e2e_ms"] for m in per_seed]),
            "per_seed": per_seed,
        }
    if workload in NONSTATIONARY:
        cell["phase_s"] = base.duration_s / scale / 3
    cell["bar"] = bar(cell)
    cell["runs_wall_s"] = sum(m["wall_s"] for m in runs.values())
    return cell


def run_all(s: Settings, pool: ProcessPoolExecutor | None, doc: dict, save: Callable[[], None]) -> int:
    """Knees, then every (workload, load, seed, policy) run, in this process (`pool` None) or
    through `pool`; each cell is written (`save`) once its runs are in, cells in the order
    workloads x loads whatever order the runs end in."""
    knee_futures = {w: pool.submit(knee_task, w, s) for w in s.workloads} if pool is not None else {}
    for w in s.workloads:
        try:
            knee = knee_task(w, s) if pool is None else knee_futures[w].result()
        except KneeNotFound as e:
            sys.stderr.write(f"python -m l4_sglang.bench suite: error: {w}: {e}\n")
            return 1
        doc["knees"][w] = knee
        rate = f"{knee['rate_req_s']:.3g} req/s"
        _log(w, s.quiet)(f"knee at rate scale {knee['scale']:.4g} ({rate}), {knee['wall_s']:.1f} s")
    traces = {w: {seed: base_trace(w, seed, s) for seed in s.seeds} for w in s.workloads}
    order = [(w, load) for w in s.workloads for load in s.loads]
    scales = {(w, load): doc["knees"][w]["scale"] * LOADS[load] for w, load in order}
    keys = [(w, load, seed, pol) for w, load in order for seed in s.seeds for pol in s.policies]
    runs: dict[tuple[str, str], dict[tuple[int, str], dict]] = {c: {} for c in order}
    done_cells: dict[tuple[str, str], dict] = {}

    def handle(key: tuple, m: dict, left: int) -> None:
        w, load, seed, pol = key
        runs[(w, load)][(seed, pol)] = m
        log = _log(w, s.quiet)
        log(
            f"{load}: seed {seed} {pol}: mean E2E {fmt_s(m['mean_e2e_ms'])} s, "
            f"P99 {fmt_s(m['p99_e2e_ms'])} s "
            f"({m['wall_s']:.1f} s wall; {left} runs left)"
        )
        if len(runs[(w, load)]) < len(s.seeds) * len(s.policies):
            return
        cell = assemble_cell(w, load, scales[(w, load)], traces[w], runs[(w, load)], s)
        done_cells[(w, load)] = cell
        doc["cells"] = [done_cells[c] for c in order if c in done_cells]
        save()
        b = cell["bar"]
        log(
            f"cell {w} / {load} done ({len(done_cells)}/{len(order)}; {cell['runs_wall_s']:.1f} s of runs): "
            f"l4/best blind {fmt_x(b['l4_over_best_blind_mean'])}, "
            f"l4/oracle {fmt_x(b['l4_over_oracle_mean'])}, "
            f"bar {verdict(b)}"
        )

    if pool is None:
        for i, k in enumerate(keys):
            handle(k, policy_task(k[0], k[2], scales[k[:2]], k[3], s), len(keys) - i - 1)
        return 0
    # static_oracle first: the longest runs, so that they do not trail at the end.
    rank = {k: i for i, k in enumerate(keys)}
    submitted = sorted(keys, key=lambda k: (k[3] != ORACLE, rank[k]))
    by_future: dict[Future, tuple] = {
        pool.submit(policy_task, k[0], k[2], scales[k[:2]], k[3], s): k for k in submitted
    }
    pending = set(by_future)
    while pending:
        finished, pending = wait(pending, return_when=FIRST_COMPLETED)
        for f in sorted(finished, key=lambda f: rank[by_future[f]]):
            handle(by_future[f], f.result(), len(pending))
    return 0
