"""`python -m l4_sglang.bench tables KIND ...`: markdown tables from benchmark results, on stdout.

- `tables headline DIR`: for every headline sweep under DIR (docs/bench/headline/run.sh's output,
  SIMULATED): each policy at each rate (mean/P99 E2E, TTFT, TPOT, SLO attainment) and its max rate at
  SLO; then l4 against the best baseline at each rate (the baseline with the lowest value of that
  metric at that rate) beside the paper's bar.
- `tables merge-l4 NEW DOCS`: no table; replaces l4's runs in each `DOCS/<sweep>/summary.json` with
  those of `NEW/<sweep>` (run.sh with `POLICIES=l4`) and rewrites that sweep's summary.md and
  latency_vs_load.png.
- `tables vs-sim [--real R] [--emulated E] --sim S [--goal 0.15]`: real vs simulated vs emulated
  per policy, for one workload. R and E: a `summary.json` of `python -m l4_sglang.bench compare`
  (its output folder is fine too), R on GPUs, E with `--backend emulated`; each may be given more
  than once (a run made in two calls), merged by policy. S: the bench CLI's simulator output for
  the same workload and instance count.
- `tables live-vs-sim DIR`: docs/bench/live-vs-sim/run.sh's folders (`live_l4`, `live_round_robin`,
  `live_smg`) against its `sim/`: live / simulated per policy.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from l4_sglang.bench.report import write_markdown, write_plots

VS_SIM_DOC = """Real vs simulated vs emulated, per policy. Each policy's simulated twin: the same
name for ours; smg's `smg_<p>` against the simulator's `<p>` (round_robin, power_of_two, least_load:
smg's own implementations, not ours, so the twin is close but not exact); `smg_cache_aware` has none
(the simulator has no cache_aware policy). Ratios are to the real run when there is one, else
emulated over simulated."""

BAR = {"mean_e2e": 0.33, "p99_e2e": 0.31, "max_rate": 2.89}
SWEEPS = [
    "mooncake_het",
    "mooncake_nohet",
    "azure_code_het",
    "azure_code_nohet",
    "azure_conv_het",
    "azure_conv_nohet",
]


def _s(ms: float) -> str:
    return f"{ms / 1000:.2f}"


def headline(out: Path) -> None:
    """Per sweep of `out`: each policy at each rate, its max rate at SLO, l4 against the best baseline."""
    print("All numbers SIMULATED (discrete-event simulator, llama3-8b-h100-flashinfer, 16 instances).")
    for name in SWEEPS:
        f = out / name / "summary.json"
        if not f.is_file():
            continue
        data = json.loads(f.read_text())
        cfg, runs = data["config"], data["runs"]
        pols = list(dict.fromkeys(r["policy"] for r in runs))
        rates = sorted({r["rate_scale"] for r in runs})
        at = {(r["policy"], r["rate_scale"]): r for r in runs}
        het = "on" if cfg["het"] else "off"
        print(f"\n## {name}: {Path(cfg['trace']).name}, {cfg['requests']} requests, length-mix term {het}\n")
        print("| rate | policy | req/s | mean E2E s | P99 E2E s | mean TTFT s | P99 TTFT s | mean TPOT ms "
              "| P99 TPOT ms | SLO att. | migr. |")  # fmt: skip
        print("|---|---|---|---|---|---|---|---|---|---|---|")
        for rate in rates:
            for p in pols:
                r = at[(p, rate)]
                print(
                    f"| {rate:g} | {p} | {r['request_throughput']:.2f} | {_s(r['mean_e2e_latency_ms'])} "
                    f"| {_s(r['p99_e2e_latency_ms'])} | {_s(r['mean_ttft_ms'])} | {_s(r['p99_ttft_ms'])} "
                    f"| {r['mean_tpot_ms']:.1f} | {r['p99_tpot_ms']:.1f} | {r['slo_attainment']:.3f} "
                    f"| {r['migrations']} |"
                )
        mr = {p: at[(p, rates[0])]["max_rate_at_slo"] for p in pols}
        slo = f"TTFT <= {cfg['slo_ttft_ms']:g} ms, TPOT <= {cfg['slo_tpot_ms']:g} ms"
        below = f"< {rates[0]:g}"
        listed = ", ".join(f"{p} {mr[p] if mr[p] is not None else below}" for p in pols)
        print(f"\nMax rate scale at SLO ({slo}, attainment >= {cfg['slo_threshold']}): {listed}")
        base = [p for p in pols if p != "l4"]
        best_rate = max((mr[p] or 0.0) for p in base)
        l4_rate = mr.get("l4") or 0.0
        ratio = l4_rate / best_rate if best_rate > 0 else float("inf")
        verdict = "meets" if ratio >= BAR["max_rate"] else "misses"
        step = rates[1] - rates[0]
        print(
            f"\nl4 / best baseline max rate at SLO: {ratio:.2f}x "
            f"(bar >= {BAR['max_rate']}x: {verdict}; step {step:g})\n"
        )
        print(
            "| rate | best baseline (mean E2E) | l4 / it, mean | best baseline (P99 E2E) | l4 / it, P99 "
            "| l4 / round_robin, mean | l4 / llumnix, mean |"
        )
        print("|---|---|---|---|---|---|---|")
        for rate in rates:
            bm = min(base, key=lambda p: at[(p, rate)]["mean_e2e_latency_ms"])
            bp = min(base, key=lambda p: at[(p, rate)]["p99_e2e_latency_ms"])
            l4 = at[("l4", rate)]
            rm = l4["mean_e2e_latency_ms"] / at[(bm, rate)]["mean_e2e_latency_ms"]
            rp = l4["p99_e2e_latency_ms"] / at[(bp, rate)]["p99_e2e_latency_ms"]
            other = [
                f"{l4['mean_e2e_latency_ms'] / at[(p, rate)]['mean_e2e_latency_ms']:.2f}"
                if p in pols
                else "-"
                for p in ("round_robin", "llumnix")
            ]
            print(f"| {rate:g} | {bm} | {rm:.2f} | {bp} | {rp:.2f} | {other[0]} | {other[1]} |")
        print(f"\n(paper's bar: mean E2E <= {BAR['mean_e2e']}x, P99 E2E <= {BAR['p99_e2e']}x)")


def merge_l4(new: Path, docs: Path) -> None:
    """l4's runs in each `docs/<sweep>/summary.json` replaced by those of `new/<sweep>` (a re-run of
    l4 alone: the baselines do not change when only l4 does); summary.md and the sweep plot rewritten."""
    for f in sorted(new.glob("*/summary.json")):
        old_f = docs / f.parent.name / "summary.json"
        if not old_f.is_file():
            continue
        old, fresh = json.loads(old_f.read_text()), json.loads(f.read_text())
        runs = [r for r in old["runs"] if r["policy"] != "l4"] + [
            r for r in fresh["runs"] if r["policy"] == "l4"
        ]
        old["runs"] = sorted(runs, key=lambda r: (r["rate_scale"], r["policy"] != "l4"))
        old_f.write_text(json.dumps(old, indent=2) + "\n")
        write_markdown(old_f.parent / "summary.md", old["runs"], old["config"])
        write_plots(old_f.parent, old["runs"], {}, sweep=True)  # latency_vs_load.png
        print(f"{old_f}: l4 replaced ({sum(r['policy'] == 'l4' for r in fresh['runs'])} runs)")


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


def vs_sim(argv: list[str]) -> int:
    p = argparse.ArgumentParser(prog="python -m l4_sglang.bench tables vs-sim", description=VS_SIM_DOC)
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


def live_vs_sim(out: Path) -> None:
    """Live / simulated per policy (smg's round robin against the simulated round_robin)."""
    sim = {r["policy"]: r for r in json.loads((out / "sim/summary.json").read_text())["runs"]}
    rows = [("l4", "live_l4", "l4"), ("round_robin", "live_round_robin", "round_robin"),
            ("smg (round_robin)", "live_smg", "round_robin")]  # fmt: skip
    head = " | ".join(f"{h} live / sim (ms)" for _, h in KEYS)
    print(f"| target | {head} | mean E2E live/sim | migrations live / sim | failed |")
    print("|---|" + "---|" * (len(KEYS) + 3))
    for name, folder, sim_pol in rows:
        f = out / folder / "summary.json"
        if not f.is_file():
            continue
        (live,) = json.loads(f.read_text())["runs"]
        s = sim[sim_pol]
        cells = [f"{live[k]:.0f} / {s[k]:.0f}" for k, _ in KEYS]
        ratio = live["mean_e2e_latency_ms"] / s["mean_e2e_latency_ms"]
        migr = f"{live['migrations'] if live['migrations'] is not None else '-'} / {s['migrations']}"
        print(f"| {name} | " + " | ".join(cells) + f" | {ratio:.3f} | {migr} | {live['failed']} |")


def main(argv: list[str]) -> int:
    kinds = {"headline": 1, "merge-l4": 2, "live-vs-sim": 1}
    if argv and argv[0] == "vs-sim":
        return vs_sim(argv[1:])
    if not argv or argv[0] not in kinds or len(argv) != 1 + kinds[argv[0]]:
        print(__doc__, file=sys.stderr)
        return 2
    paths = [Path(a) for a in argv[1:]]
    {"headline": headline, "merge-l4": merge_l4, "live-vs-sim": live_vs_sim}[argv[0]](*paths)
    return 0
