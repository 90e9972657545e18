"""`python -m l4_sglang.bench synth KIND --output PATH`: write a synthetic trace as Mooncake JSONL.

KIND is one of `workload.synthetic.SYNTHETIC_KINDS` (bimodal, trimodal, lognormal,
nonstationary; see `synthetic_trace`). The file is what `load_trace` reads; replay it with
`python -m l4_sglang.bench --trace PATH --exact-timestamps ...` to get the generated arrivals
back (without the flag the loader spreads them over Mooncake's 3 s quantum). The same arguments
and --seed always write the same file. A summary of what was written goes to stderr.
"""

from __future__ import annotations

import argparse
import math
import sys
from pathlib import Path

import numpy as np

from l4_sglang.cli_help import HelpFormatter, parse_strict
from l4_sglang.workload import SYNTHETIC_KINDS, synthetic_trace, truncate, write_mooncake
from l4_sglang.workload.trace import Trace


class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> None:
        self.print_usage(sys.stderr)
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="python -m l4_sglang.bench synth", description=__doc__, formatter_class=HelpFormatter)
    p.add_argument("kind", choices=SYNTHETIC_KINDS, help="which workload")
    p.add_argument("--output", required=True, help="the .jsonl file to write")
    p.add_argument(
        "--rate", type=float, default=5.0, help="requests per second (nonstationary: of its chat phases)"
    )
    p.add_argument("--duration-s", type=float, default=600.0, help="seconds of arrivals")
    p.add_argument("--count", type=int, default=None, help="keep the first COUNT requests (default: all)")
    p.add_argument("--cv", type=float, default=1.0, help="coefficient of variation of the gaps (1: Poisson)")
    p.add_argument(
        "--long-share",
        type=float,
        default=None,
        help="bimodal: share of long prompts (default 0.03); nonstationary: that share in its chat "
        "phases (default 0.01)",
    )
    p.add_argument(
        "--doc-share",
        type=float,
        default=None,
        help="nonstationary: share of long prompts in the document phase (default 0.3)",
    )
    p.add_argument(
        "--max-context",
        type=int,
        default=131072,
        help="requests longer than this (prompt + output) are cut to fit",
    )
    p.add_argument("--seed", type=int, default=0, help="the generator's seed")
    p.add_argument("--quiet", action="store_true", help="no summary on stderr")
    return p


def describe(trace: Trace) -> str:
    p = trace.prompt_lengths()
    if p.size == 0:
        return f"{trace.name}: no requests"
    q50, q90, q99 = (int(x) for x in np.percentile(p, [50, 90, 99]))
    return (
        f"{trace.name}: {len(trace)} requests over {trace.duration_s:g} s ({trace.mean_rate:.3g}/s), "
        f"prompt p50/p90/p99/max {q50}/{q90}/{q99}/{int(p.max())}, >=16K: {(p >= 16384).mean():.1%} "
        f"of requests, {p[p >= 16384].sum() / max(p.sum(), 1):.1%} of prompt tokens"
    )


def main(argv: list[str] | None = None) -> int:
    p = build_parser()
    args = parse_strict(p, argv)
    for name in ("rate", "duration_s", "cv"):
        v = getattr(args, name)
        if not (math.isfinite(v) and v > 0):
            p.error(f"--{name.replace('_', '-')} must be > 0, got {v}")
    if args.count is not None and args.count < 0:
        p.error(f"--count must be >= 0, got {args.count}")
    try:
        trace = synthetic_trace(
            args.kind,
            args.rate,
            args.duration_s,
            seed=args.seed,
            cv=args.cv,
            long_share=args.long_share,
            doc_share=args.doc_share,
            max_context=args.max_context,
        )
        if args.count is not None:
            trace = truncate(trace, count=args.count)
    except ValueError as e:
        p.error(str(e))
    out = Path(args.output)
    out.parent.mkdir(parents=True, exist_ok=True)
    write_mooncake(trace, out)
    if not args.quiet:
        sys.stderr.write(f"wrote {out}: {describe(trace)}\n")
    return 0
