"""`python -m l4_sglang.bench capacity`: round-robin's capacity on N instances (simulator, H200
FlashInfer calibration) and the arrival rate of the policy-comparison workload: ~70% of it
(SIMULATED).

    python -m l4_sglang.bench capacity [--trace T | --traces-dir D] [--instances 2,4,16]
        [--workloads-out docs/bench/real-gpu/workloads.json] > docs/bench/real-gpu/capacity.md

Capacity: the first --mix-s seconds of the Mooncake conversation trace (the length mix), sent at
--saturate-x times its rate so every instance has a queue throughout; round-robin's completions
between the 10th and the 90th percentile of finish times, over that time, are its sustained
request throughput C(N) (req/s). A workload of this mix arriving at rate lambda keeps round-robin
stable only while lambda < C(N); its utilisation is lambda / C(N).

Workload of the live run on N instances: the first S seconds of the trace (SLICE_S) (N=2: 35 s,
N=4: 60 s, ...), its rate scaled so that it arrives at --load x C(N) on average:
rate_scale = load x C(N) / (slice requests / slice seconds). The slice is then replayed in
slice / rate_scale seconds. With --workloads-out, writes the choices there (the `--workloads` of
`python -m l4_sglang.bench compare`).
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

import numpy as np

from l4_sglang.bench.trace_files import TRACES_DIR_HELP, trace_path
from l4_sglang.cli_help import HelpFormatter
from l4_sglang.core import CostModel
from l4_sglang.sim import simulate
from l4_sglang.workload import load_trace, scale_rate, truncate

SLICE_S = {2: 35.0, 4: 60.0, 16: 600.0}
"""Trace seconds replayed per instance count: ~1-1.5 minutes of traffic live per policy for N = 2 and 4,
so that three policies fit one device call (10 minutes) after SGLang's start-up."""


def steady_throughput(res) -> float:
    fins = np.sort([r.finished_s for r in res.completed])
    lo, hi = int(0.1 * fins.size), int(0.9 * fins.size)
    return (hi - lo) / (fins[hi] - fins[lo])


def sig3(x: float) -> float:
    return float(f"{x:.3g}")


def main(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m l4_sglang.bench capacity", description=__doc__,
                                formatter_class=HelpFormatter)  # fmt: skip
    p.add_argument("--trace", default=None, help="default: the Mooncake conversation trace of --traces-dir")
    p.add_argument("--traces-dir", default=None, help=TRACES_DIR_HELP)
    p.add_argument("--cost-model", default="llama3-8b-h200-flashinfer")
    p.add_argument("--instances", default="2,4,16")
    p.add_argument("--mix-s", type=float, default=1200.0, help="trace seconds that define the length mix")
    p.add_argument("--saturate-x", type=float, default=20.0)
    p.add_argument("--load", type=float, default=0.7)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--workloads-out", default=None, help="write the workloads (JSON) there")
    args = p.parse_args(argv)
    if args.trace is None:
        args.trace = str(trace_path(args.traces_dir, "mooncake_conversation"))
    model = CostModel.load(args.cost_model)
    trace = load_trace(args.trace, seed=args.seed)
    mix = truncate(trace, duration_s=args.mix_s)
    mix_rate = len(mix) / args.mix_s
    ns = [int(x) for x in args.instances.split(",")]
    out: dict = {
        "trace": Path(args.trace).name,
        "cost_model": model.name,
        "seed": args.seed,
        "load": args.load,
        "mix_s": args.mix_s,
        "mix_requests": len(mix),
        "mix_rate_req_s": mix_rate,
        "workloads": {},
    }
    print(f"# Round-robin capacity (SIMULATED, `{model.name}`) and the comparison workloads\n")
    print(
        f"Length mix: the first {args.mix_s:g} s of `{Path(args.trace).name}` ({len(mix)} requests, "
        f"{mix_rate:.3f} req/s at the trace's own rate), seed {args.seed}. Capacity C(N): round-robin's "
        f"completions between the 10th and 90th percentile finish times with the mix sent at "
        f"{args.saturate_x:g}x its rate (a queue on every instance throughout).\n"
    )
    print("| N | C(N) req/s | C(N) / N | C(N) / mix rate |")
    print("|---|---|---|---|")
    caps = {}
    for n in ns:
        sat = simulate(scale_rate(mix, args.saturate_x), "round_robin", model, n, seed=args.seed)
        caps[n] = steady_throughput(sat)
        print(f"| {n} | {caps[n]:.3f} | {caps[n] / n:.3f} | {caps[n] / mix_rate:.3f} |")
    print(
        f"\nWorkload per N: the first S trace seconds, rate scale = {args.load:g} x C(N) / (slice rate); "
        "round-robin there, simulated (model seconds; drain = last finish - last arrival):\n"
    )
    print(
        "| N | slice s | requests | slice req/s | rate scale | arrivals req/s | utilisation | traffic s "
        "| RR mean E2E ms | RR P99 E2E ms | RR mean TTFT ms | RR drain s |"
    )
    print("|" + "---|" * 12)
    for n in ns:
        slice_s = SLICE_S.get(n, 600.0)
        part = truncate(trace, duration_s=slice_s)
        slice_rate = len(part) / slice_s
        scale = sig3(args.load * caps[n] / slice_rate)
        res = simulate(scale_rate(part, scale), "round_robin", model, n, seed=args.seed)
        s = res.summary()
        last_arrival = max(r.arrival_s for r in res.records)
        drain = max(r.finished_s for r in res.completed) - last_arrival
        traffic = slice_s / scale
        util = slice_rate * scale / caps[n]
        out["workloads"][str(n)] = {
            "instances": n,
            "duration_s": slice_s,
            "rate_scale": scale,
            "requests": len(part),
            "capacity_req_s": caps[n],
            "arrival_req_s": slice_rate * scale,
            "utilisation": util,
            "traffic_s": traffic,
            "rr_sim_mean_e2e_ms": s["mean_e2e_latency_ms"],
            "rr_sim_drain_s": drain,
        }
        print(
            f"| {n} | {slice_s:g} | {len(part)} | {slice_rate:.3f} | {scale:g} | {slice_rate * scale:.3f} "
            f"| {util:.2f} | {traffic:.0f} | {s['mean_e2e_latency_ms']:.0f} | {s['p99_e2e_latency_ms']:.0f} "
            f"| {s['mean_ttft_ms']:.0f} | {drain:.0f} |"
        )
    print("\nRound-robin's knee on the mix itself (mean E2E against utilisation), for the record:\n")
    print("| N | " + " | ".join(f"{u:g}" for u in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0)) + " |")
    print("|---|" + "---|" * 6)
    for n in ns:
        cells = []
        for u in (0.5, 0.6, 0.7, 0.8, 0.9, 1.0):
            res = simulate(scale_rate(mix, u * caps[n] / mix_rate), "round_robin", model, n, seed=args.seed)
            cells.append(f"{res.summary()['mean_e2e_latency_ms'] / 1000:.1f} s")
        print(f"| {n} | " + " | ".join(cells) + " |")
    if args.workloads_out:
        Path(args.workloads_out).write_text(json.dumps(out, indent=2) + "\n")
        print(f"\n(wrote {args.workloads_out})", file=sys.stderr)
    return 0
