"""The benchmark's reports: `summary.md` (one table row per run) and the PNG plots
(E2E latency CDFs, latency against load, L4's stage boundaries over time).

Matplotlib is imported only when a plot is drawn.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np

from l4_sglang.sim import LayoutSample

SLO_THRESHOLD = 0.9
"""slo_attainment a rate scale needs to count toward max_rate_at_slo."""


def _fmt(v) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.3g}" if abs(v) < 1000 else f"{v:.0f}"
    return str(v)


def write_markdown(path: Path, runs: list[dict], meta: dict) -> None:
    cols = [
        ("policy", "policy"),
        ("rate_scale", "rate"),
        ("completed", "done"),
        ("request_throughput", "req/s"),
        ("mean_e2e_latency_ms", "mean E2E ms"),
        ("p99_e2e_latency_ms", "p99 E2E ms"),
        ("mean_ttft_ms", "mean TTFT ms"),
        ("p99_ttft_ms", "p99 TTFT ms"),
        ("mean_tpot_ms", "mean TPOT ms"),
        ("migrations", "migr."),
        ("slo_attainment", "SLO att."),
        ("mean_e2e_over_oracle", "E2E/oracle"),
        ("max_rate_at_slo", "max rate@SLO"),
    ]
    het = "on" if meta["het"] else "off (--no-het)"
    if meta.get("mode") == "live":
        emulated = {r.get("emulated") for r in runs}
        workers = {
            frozenset({True}): "emulated workers",
            frozenset({False}): "real workers, not emulated",
        }.get(frozenset(emulated), "workers (emulated: unknown)")
        head = [
            f"# Live benchmark (over HTTP, {workers}): {meta['trace']}",
            "",
            f"Router {meta['url']}, worker time scale {meta['worker_time_scale']:g} (times in model "
            "seconds), oracle from cost model `{0}`.".format(meta["cost_model"]),
        ]
    else:
        head = [f"# Simulated benchmark: {meta['trace']}"]
    lines = [
        *head,
        "",
        f"{meta['instances']} instances, cost model `{meta['cost_model']}`, length-mix term {het}, "
        f"seed {meta['seed']}, SLO TTFT <= {meta['slo_ttft_ms']:g} ms and TPOT <= {meta['slo_tpot_ms']:g} ms "
        f"(max rate@SLO: largest swept rate scale with SLO attainment >= {SLO_THRESHOLD}).",
        *_knob_lines(meta),
        "",
        "| " + " | ".join(h for _, h in cols) + " |",
        "|" + "---|" * len(cols),
    ]
    for r in runs:
        lines.append("| " + " | ".join(_fmt(r.get(k)) for k, _ in cols) + " |")
    staged = [p for p in dict.fromkeys(r["policy"] for r in runs) if p in STAGE_PLOT_POLICIES]
    for p in staged:
        lines += ["", f"Stage boundaries over time ({p}): `stages_{p}*.png`, timeline in `{p}*_stages.json`."]
    path.write_text("\n".join(lines) + "\n")


def _knob_lines(meta: dict) -> list[str]:
    lines = []
    if meta.get("max_context"):
        lines.append(f"Requests capped at {meta['max_context']} tokens of context (--max-context).")
    if meta.get("exact_timestamps"):
        lines.append("Timestamps replayed exactly (--exact-timestamps).")
    for pol, knobs in (meta.get("policy_overrides") or {}).items():
        given = ", ".join(f"{k}={_show_knob(v)}" for k, v in knobs.items())
        lines.append(f"Policy knobs of {pol}: {given}.")
    return ["", *lines] if lines else []


def _show_knob(v) -> str:
    return ",".join(map(str, v)) if isinstance(v, list | tuple) else str(v)


STAGE_PLOT_POLICIES = ("l4",)
"""Policies whose stage layout over time is written and drawn."""


def stages_name(policy: str, rate: float, sweep: bool) -> str:
    return f"{policy}_rate{rate:g}" if sweep else policy


def plot_stages(path: Path, layouts: list[LayoutSample], end_s: float, title: str) -> None:
    """Boundaries over time (each held until the next sample, the last until `end_s`) and K."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    t0 = layouts[0].time_s
    fig, (top, bottom) = plt.subplots(
        2, 1, figsize=(7, 4.5), sharex=True, gridspec_kw={"height_ratios": [3, 1]}
    )
    starts = [(s.time_s - t0) / 60 for s in layouts]
    ends = [*starts[1:], max((end_s - t0) / 60, starts[-1])]
    xs, ys, x1s = [], [], []
    for a, b, s in zip(starts, ends, layouts, strict=True):
        for bound in s.bounds:
            xs.append(a)
            x1s.append(b)
            ys.append(bound)
    if ys:
        top.hlines(ys, xs, x1s, colors="tab:blue", linewidth=1.2)
        top.set_yscale("log")
    top.set_ylabel("stage boundary (tokens)")
    top.set_title(title)
    k = [len(s.workers) for s in layouts]
    bottom.step([*starts, ends[-1]], [*k, k[-1]], where="post", color="tab:orange")
    bottom.set_ylabel("stages")
    bottom.set_xlabel("time (min)")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)


def write_plots(
    out: Path,
    runs: list[dict],
    e2e: dict[tuple[str, float], np.ndarray],
    sweep: bool,
    kind: str = "simulated",
) -> list[Path]:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    files = []
    rates = sorted({r for _, r in e2e})
    for rate in rates:
        fig, ax = plt.subplots(figsize=(6, 4))
        for (pol, r), ms in e2e.items():
            if r != rate or ms.size == 0:
                continue
            xs = np.sort(ms) / 1000
            ax.plot(xs, np.arange(1, xs.size + 1) / xs.size, label=pol)
        ax.set_xscale("log")
        ax.set_xlabel("E2E latency (s)")
        ax.set_ylabel("CDF")
        ax.set_title(f"E2E latency CDF, rate scale {rate:g} ({kind})")
        ax.legend()
        fig.tight_layout()
        f = out / (f"e2e_cdf_rate{rate:g}.png" if sweep else "e2e_cdf.png")
        fig.savefig(f, dpi=100)
        plt.close(fig)
        files.append(f)
    if sweep:
        fig, ax = plt.subplots(figsize=(6, 4))
        for pol in dict.fromkeys(r["policy"] for r in runs):
            pts = sorted((r["rate_scale"], r["mean_e2e_latency_ms"]) for r in runs if r["policy"] == pol)
            ax.plot([p[0] for p in pts], [p[1] / 1000 for p in pts], marker="o", label=pol)
        ax.set_xlabel("rate scale")
        ax.set_ylabel("mean E2E latency (s)")
        ax.set_title(f"Latency vs load ({kind})")
        ax.legend()
        fig.tight_layout()
        f = out / "latency_vs_load.png"
        fig.savefig(f, dpi=100)
        plt.close(fig)
        files.append(f)
    return files
