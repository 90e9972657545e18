"""Real vs simulated vs emulated, per policy, for the policy-comparison workload (issues 7/8).

    python docs/bench/real-gpu/compare.py [--real R] [--emulated E] --sim S [--goal 0.15]

R and E: a `summary.json` written by docs/gpu/policy_compare.py (its $OUT; a folder holding one is
fine too): R from `--backend sglang` on GPUs, E from `--backend emulated`; each may be given more
than once (a run made in two calls), merged by policy. S: the bench CLI's
simulator output folder (`summary.json`) for the same workload and instance count. Any of R and E
may be left out (before a GPU run: emulated vs simulated only).

Each policy's simulated twin: the same name for ours; smg's `smg_<p>` against the simulator's `<p>`
(round_robin, power_of_two, least_load: smg's own implementations, not ours, so the twin is close
but not exact); `smg_cache_aware` has none (the simulator has no cache_aware policy). Ratios are
to the real run when there is one, else emulated over simulated.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

KEYS = (("mean_e2e_latency_ms", "mean E2E"), ("p99_e2e_latency_ms", "P99 E2E"), ("mean_ttft_ms", "mean TTFT"),
        ("mean_tpot_ms", "mean TPOT"))  # fmt: skip


def load_rows(paths: list[str] | str | None) -> dict[str, dict]:
    """Runs with results by policy label, from one or more summary.json files (later ones win)."""
    if paths is None:
        return {}
    out = {}
    for path in [paths] if isinstance(paths, str) else paths:
        p = Path(path)
        if p.is_dir():
            p = p / "summary.json"
        for r in json.loads(p.read_text())["runs"]:
            name = r.get("label") or r.get("policy")
            if r.get("mean_e2e_latency_ms") is not None:
                out[name] = r
    return out


def twin(label: str) -> str | None:
    if label.startswith("smg_"):
        pol = label[4:]
        return None if pol == "cache_aware" else pol
    return label


def cell(v: float | None, ms: bool = True) -> str:
    if v is None:
        return "-"
    return f"{v / 1000:.2f} s" if ms and v >= 1000 else f"{v:.0f} ms" if ms else f"{v:.3f}"


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--real", action="append", help="repeat for the calls of one run (merged by policy)")
    p.add_argument("--emulated", action="append")
    p.add_argument("--sim", required=True)
    p.add_argument("--goal", type=float, default=0.15, help="allowed |ratio - 1| on mean E2E (0.15)")
    a = p.parse_args(argv)
    real, emu, sim = load_rows(a.real), load_rows(a.emulated), load_rows(a.sim)
    labels = list(dict.fromkeys([*real, *emu]))
    if not labels:
        print("no runs with results in --real or --emulated", file=sys.stderr)
        return 1
    base = "real" if real else "emulated"
    print(
        "| policy | sim twin | "
        + " | ".join(f"{h} real / sim / emulated" for _, h in KEYS)
        + f" | sim / {base} mean E2E | "
        + ("emulated / real mean E2E | " if real else "")
        + f"within {a.goal:.0%} |"
    )
    print("|---|---|" + "---|" * (len(KEYS) + (3 if real else 2)))
    worst = 0.0
    for label in labels:
        r, e = real.get(label), emu.get(label)
        s = sim.get(twin(label) or "", None)
        cells = []
        for k, _ in KEYS:
            vals = [x.get(k) if x else None for x in (r, s, e)]
            cells.append(" / ".join(cell(v) for v in vals))
        ref = r or e
        ratios = []
        sim_ratio = s["mean_e2e_latency_ms"] / ref["mean_e2e_latency_ms"] if s and ref else None
        ratios.append(cell(sim_ratio, ms=False))
        checks = [x for x in (sim_ratio,) if x is not None]
        if real:
            emu_ratio = e["mean_e2e_latency_ms"] / r["mean_e2e_latency_ms"] if e and r else None
            ratios.append(cell(emu_ratio, ms=False))
            checks += [x for x in (emu_ratio,) if x is not None]
        ok = "-" if not checks else ("yes" if all(abs(x - 1) <= a.goal for x in checks) else "**no**")
        worst = max([worst, *(abs(x - 1) for x in checks)])
        print(
            f"| {label} | {twin(label) or 'none'} | "
            + " | ".join(cells)
            + " | "
            + " | ".join(ratios)
            + f" | {ok} |"
        )
    print(f"\nLargest |ratio - 1| on mean E2E: {worst:.3f} (goal {a.goal:g}).")
    return 0


if __name__ == "__main__":
    sys.exit(main())
