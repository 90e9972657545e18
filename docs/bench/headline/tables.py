"""Tables for docs/bench/headline/README.md from the sweeps' summary.json files (SIMULATED).

python docs/bench/headline/tables.py OUT_DIR  ->  markdown on stdout.
For every sweep: each policy at each rate (mean/P99 E2E, TTFT, TPOT, SLO attainment) and its max
rate at SLO; then l4 against the best baseline at each rate (the baseline with the lowest value of
that metric at that rate) beside the paper's bar.
"""

import json
import sys
from pathlib import Path

BAR = {"mean_e2e": 0.33, "p99_e2e": 0.31, "max_rate": 2.89}
SWEEPS = [
    "mooncake_het",
    "mooncake_nohet",
    "azure_code_het",
    "azure_code_nohet",
    "azure_conv_het",
    "azure_conv_nohet",
]


def s(ms: float) -> str:
    return f"{ms / 1000:.2f}"


def main(out: Path) -> None:
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
                    f"| {rate:g} | {p} | {r['request_throughput']:.2f} | {s(r['mean_e2e_latency_ms'])} "
                    f"| {s(r['p99_e2e_latency_ms'])} | {s(r['mean_ttft_ms'])} | {s(r['p99_ttft_ms'])} "
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


if __name__ == "__main__":
    main(Path(sys.argv[1]))
