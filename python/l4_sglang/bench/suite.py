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

The parts: `suite_config.py` (workloads, loads, policies, `Settings`, the base traces),
`knee.py` (the knee search), `suite_runs.py` (the runs, in this process or a pool, and the cells),
`suite_report.py` (the bar and suite.md), `trace_files.py` (where the real traces live); this
module reads the command line and writes suite.json.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import sys
import time
from concurrent.futures import ProcessPoolExecutor
from pathlib import Path

from l4_sglang.bench.cli import ORACLE, _jsonable
from l4_sglang.bench.knee import KNEE_RATIO, LOAD_RULE, KneeNotFound, find_knee
from l4_sglang.bench.suite_config import (
    LENGTH_BLIND,
    LOADS,
    NONSTATIONARY,
    SUITE_POLICIES,
    SYNTH_BASE_RATE,
    WORKLOADS,
    Settings,
    base_trace,
)
from l4_sglang.bench.suite_report import BAR_RULE, bar, write_markdown
from l4_sglang.bench.suite_runs import assemble_cell, run_all, run_policy
from l4_sglang.bench.trace_files import REAL_TRACES, TRACES_DIR_HELP, default_traces_dir, trace_path
from l4_sglang.cli_help import HelpFormatter, add_policy_knobs, knobs_for, parse_strict
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel, available_cost_models
from l4_sglang.policy.registry import POLICIES

__all__ = [
    "KNEE_RATIO",
    "LENGTH_BLIND",
    "LOADS",
    "NONSTATIONARY",
    "REAL_TRACES",
    "SUITE_POLICIES",
    "TRACES_DIR_HELP",
    "WORKLOADS",
    "KneeNotFound",
    "Settings",
    "assemble_cell",
    "bar",
    "base_trace",
    "build_parser",
    "default_traces_dir",
    "find_knee",
    "main",
    "run_policy",
    "trace_path",
    "write_markdown",
]


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
