"""The bar l4 must meet in each suite cell, and suite.md (`bench/suite.py`'s docstring)."""

from __future__ import annotations

from pathlib import Path

from l4_sglang.bench.cli import ORACLE
from l4_sglang.bench.suite_config import LENGTH_BLIND, NONSTATIONARY

BAR_VS_BLIND, BAR_VS_BLIND_PAST = 0.9, 0.6
BAR_VS_ORACLE, BAR_VS_ORACLE_NONSTATIONARY = 1.0, 0.75
BAR_P99 = 1.0
BAR_RULE = (
    f"mean E2E <= {BAR_VS_BLIND:g}x the best length-blind baseline's ({', '.join(LENGTH_BLIND)}; lowest mean "
    f"E2E), <= {BAR_VS_BLIND_PAST:g}x past the knee; mean E2E <= {BAR_VS_ORACLE:g}x static_oracle's on "
    f"stationary workloads, <= {BAR_VS_ORACLE_NONSTATIONARY:g}x on the non-stationary one; P99 E2E <= "
    f"{BAR_P99:g}x the best length-blind baseline's P99."
)


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


def fmt_s(ms) -> str:
    return "-" if ms is None else f"{ms / 1000:.3g}"


def fmt_x(v) -> str:
    return "-" if v is None else f"{v:.2f}x"


def _yes(v) -> str:
    return {True: "yes", False: "no", None: "n/a"}[v]


def verdict(b: dict) -> str:
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
        vals = [
            f"{fmt_s(c['policies'][p]['mean_e2e_ms'])} / {fmt_s(c['policies'][p]['p99_e2e_ms'])}"
            for p in pols
        ]
        blind = f"{fmt_x(b['l4_over_best_blind_mean'])} ({b['best_length_blind'] or '-'})"
        lines.append(
            f"| {c['workload']} | {c['load']} | {c['rate_req_s']:.3g} | "
            + " | ".join(vals)
            + f" | {blind} | "
            f"{fmt_x(b['l4_over_best_blind_p99'])} | {fmt_x(b['l4_over_oracle_mean'])} | {verdict(b)} |"
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
