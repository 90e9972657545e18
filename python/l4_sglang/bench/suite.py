"""`python -m l4_sglang.bench suite --output-dir DIR`: the policy suite, in the simulator.

Every result is SIMULATED (the discrete-event simulator with a calibrated cost model), not
measured on GPUs.

Cells are (workload, load); each cell runs every policy on every seed and reports the mean over
seeds of each policy's mean and P99 E2E latency.

Workloads (`WORKLOADS`): the Mooncake conversation trace, both Azure 2023 traces (code,
conversation), and the synthetic bimodal, trimodal, lognormal-tail and non-stationary mixes of
`workload.synthetic.synthetic_trace`. Each is cut to its first --requests requests (real traces)
or generated with about that many (synthetic, at `SYNTH_BASE_RATE` requests per second: only
the shape matters, loads rescale the arrival rate; the non-stationary one has its own, larger
--nonstationary-requests, so that its phases are not over before l4's histogram follows them).
Seed s: the Mooncake jitter, the synthetic generator and the policies' seed (Azure timestamps
are exact, so only the policies see it).

Loads (`LOADS`): multiples of round robin's knee. The knee of a workload is the rate scale at
which round robin's mean E2E on the first seed's trace reaches `KNEE_RATIO` (2) times the mean oracle
E2E (each request alone on an idle instance): found by doubling or halving the scale from 1
until it brackets the ratio, then `--knee-steps` bisections in log scale, then log-linear
interpolation inside the last bracket. light = 0.5x knee, knee = 1x, past = 1.5x. The arrivals of
the whole trace are divided by the scale (`scale_rate`), so the non-stationary mix's phases
shorten as the load grows (each cell records its phase length).

The bar (`bar`), per cell, for l4 (each part needs the policies it compares):
- mean E2E <= 0.9x the best length-blind baseline's (round_robin, least_load, power_of_two,
  llumnix: the one with the lowest mean E2E), <= 0.6x past the knee;
- mean E2E <= 1.0x static_oracle's on stationary workloads, <= 0.75x on the non-stationary one;
- P99 E2E <= 1.0x the P99 of that best length-blind baseline.

Outputs: DIR/suite.json (every number, per seed too, with each run's wall time; rewritten after
each cell, so a cut run keeps what it finished) and DIR/suite.md (the table and the cells meeting
the bar). Progress goes to stderr. --jobs N runs N simulations at a time in worker processes; the
numbers do not depend on it.
"""

from __future__ import annotations

import argparse
import json
import math
import multiprocessing
import sys
import time
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass
from functools import cache
from pathlib import Path

import numpy as np

from l4_sglang.bench import static_oracle
from l4_sglang.bench.cli import ORACLE, _jsonable, oracle_e2e_s
from l4_sglang.cli_help import HelpFormatter, add_policy_knobs, knobs_for, parse_strict
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel, available_cost_models
from l4_sglang.policy.registry import POLICIES
from l4_sglang.sim import SimResult, simulate
from l4_sglang.workload import SYNTHETIC_KINDS, load_trace, scale_rate, synthetic_trace, truncate
from l4_sglang.workload.synthetic import shifting_phases
from l4_sglang.workload.trace import Trace

REAL_TRACES = {
    "mooncake_conversation": "mooncake/conversation_trace.jsonl",
    "azure_code": "azure2023/AzureLLMInferenceTrace_code.csv",
    "azure_conversation": "azure2023/AzureLLMInferenceTrace_conv.csv",
}
"""Real workloads: paths under --traces-dir."""
WORKLOADS = (*REAL_TRACES, *SYNTHETIC_KINDS)
NONSTATIONARY = ("nonstationary",)
LOADS = {"light": 0.5, "knee": 1.0, "past": 1.5}
"""Load name -> multiple of round robin's knee."""
KNEE_RATIO = 2.0
"""Round robin's mean E2E over the mean oracle E2E at its knee."""
SYNTH_BASE_RATE = 10.0
"""Requests per second the synthetic workloads are generated at (nonstationary: its chat phases)."""
LENGTH_BLIND = ("round_robin", "least_load", "power_of_two", "llumnix")
SUITE_POLICIES = ("l4", *LENGTH_BLIND, "static_buckets", ORACLE)
BAR_VS_BLIND, BAR_VS_BLIND_PAST = 0.9, 0.6
BAR_VS_ORACLE, BAR_VS_ORACLE_NONSTATIONARY = 1.0, 0.75
BAR_P99 = 1.0


def default_traces_dir() -> Path:
    """`<checkout>/../shared/data/traces`, where the project keeps the public traces: beside the
    source tree of an editable install, else beside the working directory (an installed package
    lives in site-packages, far from any checkout)."""
    beside_source = Path(__file__).resolve().parents[3].parent / "shared" / "data" / "traces"
    return beside_source if beside_source.is_dir() else Path.cwd().parent / "shared" / "data" / "traces"


TRACES_DIR_HELP = "the public traces (default: <checkout>/../shared/data/traces)"


def trace_path(traces_dir: str | Path | None, workload: str) -> Path:
    """The file of a real workload (`REAL_TRACES`) under traces_dir (None: `default_traces_dir()`)."""
    return (Path(traces_dir) if traces_dir else default_traces_dir()) / REAL_TRACES[workload]


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def _names(text: str, known, what: str, p: argparse.ArgumentParser) -> list[str]:
    names = [x.strip() for x in text.split(",") if x.strip()]
    bad = [x for x in names if x not in known]
    if bad or not names:
        p.error(f"unknown {what} {', '.join(bad) or '(none given)'}; choices: {', '.join(known)}")
    return list(dict.fromkeys(names))


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m l4_sglang.bench suite", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("--output-dir", required=True, help="where suite.json and suite.md go")
    p.add_argument("--instances", type=int, default=16, help="simulated instances")
    p.add_argument("--seeds", default="0,1,2", help="comma-separated seeds")
    p.add_argument("--loads", default=",".join(LOADS), help=f"comma-separated, from: {', '.join(LOADS)}")
    p.add_argument(
        "--workloads", default=",".join(WORKLOADS), help=f"comma-separated, from: {', '.join(WORKLOADS)}"
    )
    p.add_argument(
        "--policies",
        default=",".join(SUITE_POLICIES),
        help=f"comma-separated, from: {', '.join([*POLICIES, ORACLE])}",
    )
    p.add_argument(
        "--requests", type=int, default=3000, help="requests per workload trace (about, for synthetic)"
    )
    p.add_argument(
        "--nonstationary-requests",
        type=int,
        default=15000,
        help="about this many requests in the non-stationary trace: at 16 instances its knee is near "
        "47 req/s, so 15000 give phases of about 100 s there (3000 would give 21 s, shorter than "
        "l4's 60 s histogram half-life)",
    )
    p.add_argument("--traces-dir", default=None, help=TRACES_DIR_HELP)
    p.add_argument(
        "--cost-model",
        default=DEFAULT_COST_MODEL,
        help=f"shipped name ({', '.join(available_cost_models())}) or a JSON path",
    )
    p.add_argument("--knee-steps", type=int, default=3, help="log-scale bisections of the knee search")
    p.add_argument(
        "--oracle-buckets", type=int, default=2, choices=(2, 3), help=f"{ORACLE}: the most buckets it tries"
    )
    p.add_argument(
        "--jobs",
        type=int,
        default=1,
        help="simulations run in parallel, one process each (the results do not depend on it)",
    )
    p.add_argument("--quiet", action="store_true", help="no progress on stderr")
    add_policy_knobs(p)
    return p


@dataclass(frozen=True)
class Settings:
    instances: int
    seeds: list[int]
    loads: list[str]
    workloads: list[str]
    policies: list[str]
    requests: int
    nonstationary_requests: int
    traces_dir: Path
    cost_model: str
    knee_steps: int
    oracle_buckets: int
    knobs: dict[str, dict]
    quiet: bool

    @property
    def model(self) -> CostModel:
        return _load_model(self.cost_model)


@cache
def _load_model(spec: str) -> CostModel:
    return CostModel.load(spec)


def base_trace(workload: str, seed: int, s: Settings) -> Trace:
    """The workload's trace at rate scale 1: first --requests requests, or about that many generated
    (--nonstationary-requests for the non-stationary mix)."""
    if workload in REAL_TRACES:
        trace = load_trace(s.traces_dir / REAL_TRACES[workload], seed=seed)
        return truncate(trace, count=s.requests)
    if workload in NONSTATIONARY:
        per_s = sum(ph.rate * ph.duration_s for ph in shifting_phases(SYNTH_BASE_RATE, 3.0)) / 3.0
        return synthetic_trace(workload, SYNTH_BASE_RATE, s.nonstationary_requests / per_s, seed=seed)
    trace = synthetic_trace(workload, SYNTH_BASE_RATE, s.requests / SYNTH_BASE_RATE, seed=seed)
    return truncate(trace, count=s.requests)


def mean_oracle_s(trace: Trace, model: CostModel) -> float:
    return float(np.mean([oracle_e2e_s(model, max(r.prompt_tokens, 1), r.output_tokens) for r in trace]))


class KneeNotFound(RuntimeError):
    pass


def find_knee(trace: Trace, s: Settings, log: Callable[[str], None]) -> dict:
    """Round robin's knee on `trace` (see the module docstring): the scale and the points swept."""
    ref = mean_oracle_s(trace, s.model)
    points: dict[float, float] = {}

    def ratio(scale: float) -> float:
        if scale not in points:
            res = simulate(scale_rate(trace, scale), "round_robin", s.model, s.instances, seed=s.seeds[0])
            e2e = [r.e2e_s for r in res.completed]
            points[scale] = float(np.mean(e2e)) / ref if e2e else math.inf
            log(f"rate scale {scale:.4g}: round_robin mean E2E {points[scale]:.3g}x oracle")
        return points[scale]

    lo, hi = None, None
    scale = 1.0
    for _ in range(16):
        if ratio(scale) < KNEE_RATIO:
            lo = scale
            if hi is not None:
                break
            scale *= 2
        else:
            hi = scale
            if lo is not None:
                break
            scale /= 2
    if lo is None or hi is None:
        top = max(points, key=points.get)
        raise KneeNotFound(
            f"no knee: round robin's mean E2E never reached {KNEE_RATIO:g}x the oracle's (at most "
            f"{points[top]:.3g}x, at rate scale {top:g}); a trace this small fits in the batches of "
            f"{s.instances} instances even when it arrives at once: use more --requests"
        )
    for _ in range(s.knee_steps):
        mid = math.sqrt(lo * hi)
        if ratio(mid) < KNEE_RATIO:
            lo = mid
        else:
            hi = mid
    flo, fhi = points[lo], points[hi]
    if math.isfinite(fhi) and fhi > flo:
        w = (KNEE_RATIO - flo) / (fhi - flo)
        knee = math.exp(math.log(lo) + w * (math.log(hi) - math.log(lo)))
    else:
        knee = math.sqrt(lo * hi)
    return {
        "scale": knee,
        "rate_req_s": knee * trace.mean_rate,
        "mean_oracle_e2e_s": ref,
        "sweep": [{"scale": k, "rr_e2e_over_oracle": v} for k, v in sorted(points.items())],
    }


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


def _ratio(a, b):
    return a / b if a is not None and b else None


def bar(cell: dict) -> dict:
    """Which parts of the bar l4 meets in this cell (None: a policy it needs was not run)."""
    pol = cell["policies"]
    l4 = pol.get("l4")
    blind = {p: pol[p] for p in LENGTH_BLIND if p in pol and pol[p]["mean_e2e_ms"] is not None}
    best = min(blind, key=lambda p: blind[p]["mean_e2e_ms"]) if blind else None
    past = cell["load"] == "past"
    nonstat = cell["workload"] in NONSTATIONARY
    out = {
        "best_length_blind": best,
        "l4_over_best_blind_mean": None,
        "l4_over_best_blind_p99": None,
        "l4_over_oracle_mean": None,
        "vs_blind_limit": BAR_VS_BLIND_PAST if past else BAR_VS_BLIND,
        "vs_oracle_limit": BAR_VS_ORACLE_NONSTATIONARY if nonstat else BAR_VS_ORACLE,
        "p99_limit": BAR_P99,
        "meets_vs_blind": None,
        "meets_vs_oracle": None,
        "meets_p99": None,
        "meets_bar": None,
    }
    if l4 is None:
        return out
    if best is not None:
        out["l4_over_best_blind_mean"] = _ratio(l4["mean_e2e_ms"], blind[best]["mean_e2e_ms"])
        out["l4_over_best_blind_p99"] = _ratio(l4["p99_e2e_ms"], blind[best]["p99_e2e_ms"])
        out["meets_vs_blind"] = out["l4_over_best_blind_mean"] <= out["vs_blind_limit"]
        out["meets_p99"] = out["l4_over_best_blind_p99"] <= BAR_P99
    if ORACLE in pol:
        out["l4_over_oracle_mean"] = _ratio(l4["mean_e2e_ms"], pol[ORACLE]["mean_e2e_ms"])
        out["meets_vs_oracle"] = out["l4_over_oracle_mean"] <= out["vs_oracle_limit"]
    parts = [out["meets_vs_blind"], out["meets_vs_oracle"], out["meets_p99"]]
    out["meets_bar"] = None if None in parts else all(parts)
    return out


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


def _s(ms) -> str:
    return "-" if ms is None else f"{ms / 1000:.3g}"


def _x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _yes(v) -> str:
    return {True: "yes", False: "no", None: "n/a"}[v]


def _verdict(b: dict) -> str:
    """yes, n/a, or no with the parts missed."""
    if b["meets_bar"] is not False:
        return _yes(b["meets_bar"])
    missed = [
        name
        for name, key in (
            ("vs blind", "meets_vs_blind"),
            ("vs oracle", "meets_vs_oracle"),
            ("P99", "meets_p99"),
        )
        if b[key] is False
    ]
    return f"no ({', '.join(missed)})"


def write_markdown(path: Path, doc: dict) -> None:
    cfg = doc["config"]
    pols = cfg["policies"]
    lines = [
        "# Policy suite (SIMULATED)",
        "",
        "All numbers come from the discrete-event simulator with cost model "
        f"`{cfg['cost_model']}`, not from GPUs. {cfg['instances']} instances, seeds "
        f"{', '.join(map(str, cfg['seeds']))}, about {cfg['requests']} requests per workload trace "
        f"({cfg['nonstationary_requests']} for nonstationary); each value is the mean over seeds.",
        "",
        f"Loads: {cfg['load_rule']}",
        "",
        f"Bar for l4: {cfg['bar_rule']}",
        "",
        "## Knees (round robin)",
        "",
        "| workload | knee rate scale | knee req/s | mean oracle E2E s |",
        "|---|---|---|---|",
    ]
    for w, k in doc["knees"].items():
        lines.append(f"| {w} | {k['scale']:.3g} | {k['rate_req_s']:.3g} | {k['mean_oracle_e2e_s']:.3g} |")
    lines += [
        "",
        "## Mean / P99 E2E latency, seconds (simulated)",
        "",
        "| workload | load | req/s | "
        + " | ".join(pols)
        + " | l4 / best blind (mean) | l4 / best blind (P99) "
        "| l4 / oracle (mean) | bar |",
        "|" + "---|" * (len(pols) + 7),
    ]
    for c in doc["cells"]:
        b = c["bar"]
        vals = [f"{_s(c['policies'][p]['mean_e2e_ms'])} / {_s(c['policies'][p]['p99_e2e_ms'])}" for p in pols]
        blind = f"{_x(b['l4_over_best_blind_mean'])} ({b['best_length_blind'] or '-'})"
        lines.append(
            f"| {c['workload']} | {c['load']} | {c['rate_req_s']:.3g} | "
            + " | ".join(vals)
            + f" | {blind} | "
            f"{_x(b['l4_over_best_blind_p99'])} | {_x(b['l4_over_oracle_mean'])} | {_verdict(b)} |"
        )
    phases = [f"{c['load']}: {c['phase_s']:.0f} s" for c in doc["cells"] if "phase_s" in c]
    if phases:
        lines += ["", f"Non-stationary phases (chat, documents, chat) last {', '.join(phases)} each."]
    met = [f"{c['workload']} / {c['load']}" for c in doc["cells"] if c["bar"]["meets_bar"]]
    lines += [
        "",
        f"## Cells meeting the bar (simulated): {len(met)} of {len(doc['cells'])}",
        "",
        *([f"- {m}" for m in met] or ["- none"]),
    ]
    path.write_text("\n".join(lines) + "\n")


LOAD_RULE = (
    f"multiples of round robin's knee, the rate scale at which its mean E2E reaches {KNEE_RATIO:g}x the "
    "mean oracle E2E (each request alone on an idle instance) on the first seed's trace, found by a doubling/"
    "halving bracket, log bisections and log-linear interpolation; "
    + ", ".join(f"{k} = {v:g}x knee" for k, v in LOADS.items())
    + "."
)
BAR_RULE = (
    f"mean E2E <= {BAR_VS_BLIND:g}x the best length-blind baseline's ({', '.join(LENGTH_BLIND)}; lowest mean "
    f"E2E), <= {BAR_VS_BLIND_PAST:g}x past the knee; mean E2E <= {BAR_VS_ORACLE:g}x static_oracle's on "
    f"stationary workloads, <= {BAR_VS_ORACLE_NONSTATIONARY:g}x on the non-stationary one; P99 E2E <= "
    f"{BAR_P99:g}x the best length-blind baseline's P99."
)


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
            f"{load}: seed {seed} {pol}: mean E2E {_s(m['mean_e2e_ms'])} s, P99 {_s(m['p99_e2e_ms'])} s "
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
            f"l4/best blind {_x(b['l4_over_best_blind_mean'])}, l4/oracle {_x(b['l4_over_oracle_mean'])}, "
            f"bar {_verdict(b)}"
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


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = parse_strict(p, argv)
    try:
        seeds = list(dict.fromkeys(int(x) for x in args.seeds.split(",") if x.strip()))
    except ValueError:
        p.error(f"invalid --seeds {args.seeds!r}: expected comma-separated integers")
    if not seeds:
        p.error("--seeds: none given")
    loads = _names(args.loads, LOADS, "load", p)
    workloads = _names(args.workloads, WORKLOADS, "workload", p)
    policies = _names(args.policies, [*POLICIES, ORACLE], "policy", p)
    if args.instances < 1:
        p.error(f"--instances must be >= 1, got {args.instances}")
    if ORACLE in policies and args.instances < 2:
        p.error(f"{ORACLE} needs --instances >= 2")
    for name in ("requests", "nonstationary_requests"):
        if getattr(args, name) < 1:
            p.error(f"--{name.replace('_', '-')} must be >= 1, got {getattr(args, name)}")
    if args.jobs < 1:
        p.error(f"--jobs must be >= 1, got {args.jobs}")
    if args.knee_steps < 0:
        p.error(f"--knee-steps must be >= 0, got {args.knee_steps}")
    knobs = knobs_for(p, args, policies, "which --policies does not run")
    traces_dir = Path(args.traces_dir) if args.traces_dir else default_traces_dir()
    for w in workloads:
        if w in REAL_TRACES and not (traces_dir / REAL_TRACES[w]).is_file():
            p.error(f"trace file not found: {traces_dir / REAL_TRACES[w]} (set --traces-dir)")
    try:
        CostModel.load(args.cost_model)
    except ValueError as e:
        p.error(str(e))
    s = Settings(
        args.instances, seeds, loads, workloads, policies, args.requests, args.nonstationary_requests,
        traces_dir, args.cost_model,
        args.knee_steps, args.oracle_buckets, knobs, args.quiet,
    )  # fmt: skip
    out = Path(args.output_dir)
    out.mkdir(parents=True, exist_ok=True)
    started = time.monotonic()
    doc = {
        "config": {
            "simulated": True,
            "instances": s.instances,
            "seeds": seeds,
            "loads": {k: LOADS[k] for k in loads},
            "workloads": workloads,
            "policies": policies,
            "requests": s.requests,
            "nonstationary_requests": s.nonstationary_requests,
            "cost_model": s.model.name,
            "synth_base_rate": SYNTH_BASE_RATE,
            "knee_ratio": KNEE_RATIO,
            "knee_steps": s.knee_steps,
            "load_rule": LOAD_RULE,
            "bar_rule": BAR_RULE,
            "policy_overrides": {k: _jsonable(v) for k, v in knobs.items()},
        },
        "knees": {},
        "cells": [],
    }

    def save() -> None:
        doc["wall_s"] = time.monotonic() - started
        (out / "suite.json").write_text(json.dumps(doc, indent=2) + "\n")
        write_markdown(out / "suite.md", doc)

    pool = (
        None
        if args.jobs == 1
        else ProcessPoolExecutor(args.jobs, mp_context=multiprocessing.get_context("spawn"))
    )
    try:
        if run_all(s, pool, doc, save) != 0:
            return 1
    finally:
        if pool is not None:
            pool.shutdown(cancel_futures=True)
    save()
    if not s.quiet:
        met = sum(bool(c["bar"]["meets_bar"]) for c in doc["cells"])
        sys.stderr.write(
            f"wrote {out}/suite.md and suite.json (simulated): {met} of {len(doc['cells'])} cells meet "
            f"the bar, {doc['wall_s']:.1f} s wall\n"
        )
    return 0
