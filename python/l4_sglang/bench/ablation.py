"""`python -m l4_sglang.bench ablation`: where L4's time goes (SIMULATED).

L4 as shipped, L4 with its defaults before the in-stage pick and stage_gain changes, L4 with only
the new in-stage pick, L4 without boundary diffusion (diffusion_rate 0: the DP's bounds stay as
set), without migrations, with one stage (the DP never runs: admission and in-stage balance only),
least_load and power_of_two, at a few loads; plus how many stages L4 ran and how long a stage had
collapsed to almost no length range.

    python -m l4_sglang.bench ablation [--traces-dir D]
        --cost-model docs/bench/llama3-8b-h100-flashinfer.snapshot.json > docs/bench/headline/ablation.md

(the H100 FlashInfer snapshot of the headline sweeps, docs/bench/headline/run.sh)."""

from __future__ import annotations

import argparse
from collections import Counter

from l4_sglang.bench.trace_files import TRACES_DIR_HELP, trace_path
from l4_sglang.cli_help import HelpFormatter
from l4_sglang.core import CostModel
from l4_sglang.sim import simulate
from l4_sglang.workload import load_trace, scale_rate, truncate

CASES = [
    ("mooncake (first 20 min)", "mooncake_conversation", 1200, [3.0, 4.5]),
    ("azure code (1 h)", "azure_code", None, [10.0, 30.0]),
    ("azure conversation (1 h)", "azure_conversation", None, [30.0]),
]
"""(label, workload of bench/trace_files.py's REAL_TRACES, trace seconds kept, rate scales)."""
OLD = {"pick": "work", "candidates": 2, "stage_gain": 0.0}  # l4's defaults before 2026-11-23's fix
VARIANTS = [
    ("l4", "l4", None),
    ("l4 before (pick work of 2 sampled, no stage_gain)", "l4", OLD),
    ("l4, in-stage pick only (stage_gain 0)", "l4", {"stage_gain": 0.0}),
    ("l4, no diffusion", "l4", {"diffusion_rate": 0.0}),
    ("l4, no migrations", "l4", {"migration": False}),
    ("l4, one stage (DP never runs)", "l4", {"min_samples": 10**9}),
    ("least_load", "least_load", None),
    ("power_of_two", "power_of_two", None),
]


def narrow(layouts, end_s: float) -> str:
    """Share of the run with a stage narrower than 5% of its lower bound (a collapsed stage), and
    the number of stages most of the run had (each layout holds until the next, the last to the end)."""
    if not layouts:
        return "-"
    total = end_s - layouts[0].time_s
    bad = 0.0
    stages = Counter()
    ends = [*(x.time_s for x in layouts[1:]), end_s]
    for a, b_time in zip(layouts, ends, strict=True):
        lows = [0.0, *a.bounds]
        highs = [*a.bounds, float("inf")]
        if any(lo > 0 and hi - lo < 0.05 * lo for lo, hi in zip(lows, highs, strict=True)):
            bad += b_time - a.time_s
        stages[len(a.workers)] += b_time - a.time_s
    k = max(stages, key=stages.get)
    return f"{k}; {bad / total:.0%}" if total > 0 else "-"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(
        prog="python -m l4_sglang.bench ablation", description=__doc__, formatter_class=HelpFormatter
    )
    p.add_argument("--cost-model", required=True, help="shipped name or JSON path")
    p.add_argument("--traces-dir", default=None, help=TRACES_DIR_HELP)
    args = p.parse_args(argv)
    cm = CostModel.load(args.cost_model)
    print("All SIMULATED: 16 instances, the H100 FlashInfer snapshot, length-mix term on, seed 0.\n")
    print("| trace | rate | variant | mean E2E s | P99 E2E s | mean TTFT s | mean TPOT ms | migr. "
          "| stages (most of the run); time with a collapsed stage |")  # fmt: skip
    print("|---|---|---|---|---|---|---|---|---|")
    for label, workload, dur, rates in CASES:
        trace = truncate(load_trace(trace_path(args.traces_dir, workload), seed=0), duration_s=dur)
        for rate in rates:
            scaled = scale_rate(trace, rate)
            for name, pol, over in VARIANTS:
                res = simulate(scaled, pol, cm, 16, seed=0, policy_overrides=over)
                s = res.summary()
                end = max(r.finished_s or 0.0 for r in res.records)
                print(
                    f"| {label} | {rate:g} | {name} | {s['mean_e2e_latency_ms'] / 1e3:.2f} "
                    f"| {s['p99_e2e_latency_ms'] / 1e3:.2f} | {s['mean_ttft_ms'] / 1e3:.2f} "
                    f"| {s['mean_tpot_ms']:.1f} | {s['migrations']} | {narrow(res.layouts, end)} |",
                    flush=True,
                )
    return 0
