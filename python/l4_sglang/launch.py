"""`python -m l4_sglang.launch`: start workers and the L4 router.

Not built yet: the router and the emulated workers land with their own issues.
Until then this prints what the Rust core decides for a chat + document mix,
so a newcomer sees the partitioner work, and says plainly that nothing is served.
"""

from __future__ import annotations

import argparse
import sys

import numpy as np

from l4_sglang.core import (
    DEFAULT_COST_MODEL,
    CostModel,
    QoeConfig,
    Workload,
    evaluate_layout,
    log_bin_edges,
    partition,
)


def synthetic_mix(rate: float, seed: int = 0, count: int = 4000) -> Workload:
    """Chats (lognormal around 600 tokens) and documents (around 40K), 9:1."""
    rng = np.random.default_rng(seed)
    chats = rng.lognormal(np.log(600), 0.8, int(count * 0.9))
    docs = rng.lognormal(np.log(40_000), 0.6, count - chats.size)
    prompts = np.clip(np.concatenate([chats, docs]), 16, 120_000)
    outputs = np.clip(rng.lognormal(np.log(300), 0.7, count), 1, 2000)
    return Workload.from_requests(prompts, outputs, duration_s=count / rate, edges=log_bin_edges(32))


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m l4_sglang.launch", description=__doc__)
    parser.add_argument("--num-instances", type=int, default=4)
    parser.add_argument("--cost-model", default=DEFAULT_COST_MODEL)
    parser.add_argument("--rate", type=float, default=2.0, help="requests per second of the synthetic mix")
    args, passthrough = parser.parse_known_args(argv)
    if args.num_instances < 1:
        parser.error("--num-instances must be >= 1")
    if args.rate <= 0:
        parser.error("--rate must be > 0")
    print(
        "l4_sglang: NOT SERVING YET. The router and the emulated workers are not built "
        "(issues 3 and 4); nothing listens on any port.",
        file=sys.stderr,
    )
    if passthrough:
        print(f"l4_sglang: ignoring flags meant for workers/router: {' '.join(passthrough)}", file=sys.stderr)
    model = CostModel.load(args.cost_model)
    workload = synthetic_mix(args.rate)
    layout = partition(model, workload, args.num_instances, QoeConfig())
    blind = evaluate_layout(model, workload, [0, workload.bins], [args.num_instances])
    print(f"Stage layout the L4 DP picks for {args.num_instances} instances ({model.name}), ")
    print(f"synthetic chat + document mix at {args.rate:g} req/s (simulated prediction, not a measurement):")
    for s in layout.stages:
        print(
            f"  [{s.lo_tokens:>9.0f}, {s.hi_tokens:>9.0f}) tokens  {s.instances} instance(s)  "
            f"utilization {s.utilization:5.2f}  TPOT {s.tpot_s * 1e3:6.1f} ms  TTFT {s.mean_ttft_s:6.2f} s"
        )
    print(
        f"  predicted mean E2E {layout.mean_e2e_s:.2f} s vs {blind.mean_e2e_s:.2f} s for one length-blind "
        f"stage; feasible: {layout.feasible}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
