"""`python -m l4_sglang.bench predict`: the DP's predicted mean E2E of stage layouts against what
the simulator then measures for each (SIMULATED), so the stage model can be checked.

    python -m l4_sglang.bench predict --trace T --instances N [--cost-model M]
        [--rate-scale X] [--duration-s S] [--exact-timestamps] [--output F.md]

The whole trace becomes one undecayed length histogram (what L4 would learn from it in the
limit); the DP lays out N instances on it as L4 does (partition, then merge_stages), and its
prediction is `evaluate_layout` on that histogram. Each layout is then simulated as a static
split (`static_buckets`: admission by prompt length, no migration; one stage is least_load,
its in-bucket pick) on the same requests, the
simulator's engine on the same cost model. The layouts: the DP's, one stage, the DP's cuts with
one or two instances moved to or from its last stage, and every one-cut layout the static
oracle's boundary grid gives, its instances split in proportion to the tokens either side.

What differs by construction: the DP also prices decode growth across a boundary as a migration
(the static split keeps a grown request where it started), and it sees rates, not the trace's
bursts. The table reports sim / predicted per layout; the issue's bar is within 15%.
"""

from __future__ import annotations

import argparse
import math
import sys
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from l4_sglang.bench.static_oracle import candidate_boundaries, proportional_instances
from l4_sglang.cli_help import HelpFormatter
from l4_sglang.core import CostModel, Workload, evaluate_layout, log_bin_edges, merge_stages, partition
from l4_sglang.policy.histogram import LengthHistogram
from l4_sglang.policy.l4_config import L4Config
from l4_sglang.policy.l4_layout import snap_cuts
from l4_sglang.sim import simulate
from l4_sglang.workload import load_trace, scale_rate, truncate


@dataclass(frozen=True)
class Check:
    label: str
    boundaries: tuple[int, ...]
    instances: tuple[int, ...]
    predicted_s: float
    simulated_s: float
    completed: int

    @property
    def ratio(self) -> float:
        return self.simulated_s / self.predicted_s if self.predicted_s > 0 else math.inf


def trace_workload(requests: Sequence, edges: np.ndarray) -> Workload:
    """The undecayed histogram of every request (arrival, all its decode tokens, its finish)."""
    hist = LengthHistogram(edges, math.inf)
    last = 0.0
    for r in sorted(requests, key=lambda r: float(r.arrival_s)):
        t = float(r.arrival_s)
        out = max(int(r.output_tokens), 1)
        hist.add_arrival(int(r.prompt_tokens), t)
        hist.add_decode(int(r.prompt_tokens), 0, out, t)
        hist.add_finish(int(r.prompt_tokens), out, t)
        last = t
    workload = hist.workload(last)
    if workload is None:
        raise ValueError("the trace needs arrivals over a span of time")
    return workload


def candidate_layouts(dp_bounds: list[float], dp_instances: list[int], prompts, tokens, n: int):
    """(label, boundaries, instances) to check, the DP's first."""
    out = [("DP", tuple(dp_bounds), tuple(dp_instances)), ("one stage", (), (n,))]
    if len(dp_instances) > 1:
        for d in (-2, -1, 1, 2):
            counts = list(dp_instances)
            counts[-1] += d
            counts[-2] -= d
            if min(counts) >= 1:
                out.append((f"DP, last stage {d:+d}", tuple(dp_bounds), tuple(counts)))
    for b in candidate_boundaries(prompts) if n > 1 else []:
        counts = proportional_instances(prompts, tokens, [b], n)
        out.append((f"cut {b}", (float(b),), counts))
    return out


def check_layouts(
    requests: Sequence, model: CostModel, n: int, config: L4Config | None = None
) -> list[Check]:
    config = config or L4Config()
    edges = log_bin_edges(config.bins, config.max_tokens)
    workload = trace_workload(requests, edges)
    qoe = config.qoe()
    dp = merge_stages(model, workload, partition(model, workload, n, qoe), config.stage_gain, qoe)
    dp_bounds = [float(s.lo_tokens) for s in dp.stages[1:]]
    prompts = np.array([r.prompt_tokens for r in requests], dtype=np.int64)
    tokens = prompts + np.array([r.output_tokens for r in requests], dtype=np.int64)
    checks, seen = [], set()
    for label, bounds, counts in candidate_layouts(dp_bounds, list(dp.instances), prompts, tokens, n):
        cuts = snap_cuts(edges, list(bounds))
        # Admission by the snapped edges, the boundaries the DP priced: a prompt of at least
        # edge tokens is in the upper bin, as it goes to the upper bucket at ceil(edge).
        snapped = tuple(math.ceil(edges[c]) for c in cuts[1:-1])
        if (snapped, counts) in seen:  # two candidates on the same bin edge
            continue
        seen.add((snapped, counts))
        predicted = evaluate_layout(model, workload, cuts, list(counts), qoe).mean_e2e_s
        if snapped:
            overrides = {"boundaries": snapped, "instances": counts}
            res = simulate(requests, "static_buckets", model, n, policy_overrides=overrides)
        else:  # one bucket: static_buckets' in-bucket pick (least outstanding) is least_load
            res = simulate(requests, "least_load", model, n)
        done = res.completed
        e2e = float(np.mean([r.finished_s - r.arrival_s for r in done])) if done else math.inf
        checks.append(Check(label, snapped, counts, float(predicted), e2e, len(done)))
    return checks


def report(checks: list[Check], title: str) -> str:
    lines = [
        f"# DP prediction vs simulation (SIMULATED): {title}",
        "",
        "| layout | boundaries | instances | DP predicted mean E2E s | simulated mean E2E s | sim / DP "
        "| done |",
        "|---|---|---|---|---|---|---|",
    ]
    for c in checks:
        cuts = ", ".join(f"{b:.0f}" for b in c.boundaries) or "-"
        lines.append(
            f"| {c.label} | {cuts} | {'+'.join(map(str, c.instances))} | {c.predicted_s:.3g} "
            f"| {c.simulated_s:.3g} | {c.ratio:.2f} | {c.completed} |"
        )
    within = sum(1 for c in checks if abs(c.ratio - 1) <= 0.15)
    best_sim = min(checks, key=lambda c: c.simulated_s)
    best_dp = min(checks, key=lambda c: c.predicted_s)
    lines += [
        "",
        f"{within} of {len(checks)} layouts within 15%. Best simulated: {best_sim.label} "
        f"({best_sim.simulated_s:.3g} s); best predicted: {best_dp.label} ({best_dp.predicted_s:.3g} s).",
    ]
    return "\n".join(lines) + "\n"


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m l4_sglang.bench predict", description=__doc__,
                                formatter_class=HelpFormatter)  # fmt: skip
    p.add_argument("--trace", required=True, help="trace file: .jsonl (Mooncake) or .csv (Azure)")
    p.add_argument("--instances", type=int, required=True, help="simulated instances")
    p.add_argument("--cost-model", default="llama3-8b-h100-flashinfer", help="shipped name or JSON path")
    p.add_argument("--rate-scale", type=float, default=1.0, help="arrival rate multiplier")
    p.add_argument("--duration-s", type=float, default=None, help="keep the first S seconds of the trace")
    p.add_argument("--exact-timestamps", action="store_true", help="keep the trace's timestamps as given")
    p.add_argument("--output", default=None, help="write the markdown table here (default: stdout)")
    args = p.parse_args(argv)
    if args.instances < 1:
        p.error("--instances must be >= 1")
    if not (math.isfinite(args.rate_scale) and args.rate_scale > 0):
        p.error(f"--rate-scale must be > 0, got {args.rate_scale}")
    if not Path(args.trace).is_file():
        p.error(f"trace file not found: {args.trace}")
    trace = load_trace(args.trace, exact_timestamps=args.exact_timestamps)
    if args.rate_scale != 1.0:
        trace = scale_rate(trace, args.rate_scale)
    if args.duration_s is not None:
        trace = truncate(trace, duration_s=args.duration_s)
    model = CostModel.load(args.cost_model)
    print(f"predict: {len(trace.requests)} requests, {args.instances} instances, {model.name}",
          file=sys.stderr)  # fmt: skip
    checks = check_layouts(list(trace.requests), model, args.instances)
    title = f"{Path(args.trace).name} x{args.rate_scale:g}, {args.instances} instances, `{model.name}`"
    text = report(checks, title)
    if args.output:
        Path(args.output).write_text(text)
        print(f"predict: wrote {args.output}", file=sys.stderr)
    else:
        sys.stdout.write(text)
    return 0
