"""The compare job's report (bench/fleet_compare.py): DIR/summary.md, DIR/summary.json,
DIR/compare.png and DIR/results.tar.gz, rewritten after every policy."""

from __future__ import annotations

import json
import shlex
import tarfile
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from l4_sglang.bench.fleet_compare import Job

EMULATED_TOO = ", emulated workers"
ARCHIVE_NOTE = (
    "Per policy: `results.tar.gz` holds `results/<policy>/` (the bench CLI's JSON, summary, E2E CDF, "
    "L4 stage timeline and plot) and `logs/` (launcher and instances, routers, bench)."
)


def row_of(label: str, run: dict, status: str, stages: dict | None) -> dict:
    keys = (
        "completed", "failed", "request_throughput", "output_throughput", "mean_e2e_latency_ms",
        "p99_e2e_latency_ms", "mean_ttft_ms", "p99_ttft_ms", "mean_tpot_ms", "p99_tpot_ms", "migrations",
        "max_send_lag_s", "worker_lost_share", "wall_s", "emulated", "slo_attainment", "mean_e2e_over_oracle",
    )  # fmt: skip
    row = {"label": label, "status": status, **{k: run.get(k) for k in keys}}
    if stages is not None:
        layouts = stages.get("layouts", [])
        row["layout_changes"] = max(len(layouts) - 1, 0)
        row["stage_layouts"] = layouts
    return row


def fmt(v, digits: int = 0) -> str:
    if v is None:
        return "-"
    if isinstance(v, float):
        return f"{v:.{digits}f}"
    return str(v)


def layout_text(layouts: list[dict], limit: int = 12) -> list[str]:
    """One line per layout change: model time, stage bounds, instances per stage."""
    if not layouts:
        return ["(no layout recorded)"]
    t0 = layouts[0]["time_s"]
    lines = []
    shown = layouts if len(layouts) <= limit else [*layouts[: limit - 1], layouts[-1]]
    for s in shown:
        bounds = ", ".join(f"{b:.0f}" for b in s.get("bounds", [])) or "none"
        counts = s.get("instances") or [len(w) for w in s.get("workers", [])]
        lines.append(
            f"- t = {s['time_s'] - t0:6.1f} s: bounds [{bounds}] tokens, instances per stage {counts}"
        )
    if len(layouts) > limit:
        lines.insert(limit - 1, f"- ... ({len(layouts) - limit} more changes)")
    return lines


def report_labels(job: Job) -> list[str]:
    """This call's policies, and before them those an earlier call ran on the same fleet."""
    mine = [t.label for t in job.targets]
    return [label for label in job.state.get("done", {}) if label not in mine] + mine


def write_report(job: Job, statuses: dict[str, str], final: bool, left_over: list[str] | None) -> None:
    a = job.args
    rows = []
    for label in report_labels(job):
        f = job.results / label / "summary.json"
        st = statuses.get(label, "pending")
        if label in job.state.get("done", {}) and f.is_file():
            run = json.loads(f.read_text())["runs"][0]
            sf = job.results / label / "l4_stages.json"
            stages = json.loads(sf.read_text()) if sf.is_file() else None
            if st == "pending":
                st = "done in an earlier call"
            rows.append(row_of(label, run, st, stages))
        else:
            rows.append({"label": label, "status": st})
    kind = "EMULATED SGLang workers (no GPU)" if a.backend == "emulated" else "real SGLang instances"
    shared = f", {a.instances_per_gpu} instances per GPU (sharing it)" if a.instances_per_gpu > 1 else ""
    head = [
        f"# Policy comparison on {job.n} {kind}{shared}",
        "",
        f"{a.label}".strip(),
        "",
        f"- fleet: `{shlex.join(job.state.get('launcher_cmd', job.launcher_cmd()))}`",
        f"- GPUs visible: {job.gpus}; start-up {fmt(job.state.get('startup_s'))} s; fleet started "
        f"{job.state.get('started', '-')}",
        f"- workload: `{Path(a.trace).name}`, first {a.duration_s:g} trace s at rate scale {a.rate_scale:g} "
        f"(~{job.traffic_s:.0f} s of traffic), seed {a.seed}, `/flush_cache` on every instance before "
        f"each policy; times in model seconds (worker time scale {a.time_scale:g})",
        f"- cost model (L4, oracle{EMULATED_TOO if a.backend == 'emulated' else ''}): `{a.cost_model}`",
        "",
        "| policy | status | done | failed | req/s | out tok/s | mean E2E ms | P99 E2E ms | mean TTFT ms "
        "| P99 TTFT ms | mean TPOT ms | P99 TPOT ms | migrations | layout changes |",
        "|" + "---|" * 14,
    ]
    for r in rows:
        head.append(
            f"| {r['label']} | {r['status']} | {fmt(r.get('completed'))} | {fmt(r.get('failed'))} "
            f"| {fmt(r.get('request_throughput'), 3)} | {fmt(r.get('output_throughput'))} "
            f"| {fmt(r.get('mean_e2e_latency_ms'))} | {fmt(r.get('p99_e2e_latency_ms'))} "
            f"| {fmt(r.get('mean_ttft_ms'))} | {fmt(r.get('p99_ttft_ms'))} | {fmt(r.get('mean_tpot_ms'), 1)} "
            f"| {fmt(r.get('p99_tpot_ms'), 1)} | {fmt(r.get('migrations'))} "
            f"| {fmt(r.get('layout_changes'))} |"
        )
    for r in rows:
        if "stage_layouts" in r:
            head += ["", f"L4 stage layout over time ({r['label']}, plot `{r['label']}/stages_l4.png`):", ""]
            head += layout_text(r["stage_layouts"])
    host = [r for r in rows if r.get("max_send_lag_s") is not None]
    if host:
        head += ["", "Client send lag (max, model s): " + ", ".join(
            f"{r['label']} {r['max_send_lag_s']:.3f}" for r in host)]  # fmt: skip
        lost = [r for r in host if r.get("worker_lost_share") is not None]
        if lost:
            head.append("Emulated workers' lost step time: " + ", ".join(
                f"{r['label']} {100 * r['worker_lost_share']:.2f}%" for r in lost))  # fmt: skip
    if final:
        head += ["", "Processes left after the stop: " + ("; ".join(left_over) if left_over else "none")]
    elif a.keep_fleet:
        head += ["", "Fleet left running for a next call (--keep-fleet)."]
    head += ["", ARCHIVE_NOTE]
    (job.out / "summary.md").write_text("\n".join(head) + "\n")
    meta = {
        "backend": a.backend, "instances": job.n, "instances_per_gpu": a.instances_per_gpu, "gpus": job.gpus,
        "sglang_flags": job.flags, "workload": job.workload, "traffic_s": job.traffic_s,
        "time_scale": a.time_scale, "cost_model": a.cost_model, "label": a.label,
        "fleet": {k: job.state.get(k) for k in ("launcher_cmd", "started", "startup_s")},
        "final": final, "left_over": left_over, "notes": job.notes,
    }  # fmt: skip
    (job.out / "summary.json").write_text(json.dumps({"config": meta, "runs": rows}, indent=1) + "\n")
    plot(job.out / "compare.png", rows, kind)
    with tarfile.open(job.out / "results.tar.gz", "w:gz") as tar:
        for label in report_labels(job):
            d = job.results / label
            if label in job.state.get("done", {}) and d.is_dir():
                tar.add(d, arcname=f"results/{label}")
        tar.add(job.logs, arcname="logs")


def plot(path: Path, rows: list[dict], kind: str) -> None:
    done = [r for r in rows if r.get("mean_e2e_latency_ms") is not None]
    if not done:
        return
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        return
    fig, axes = plt.subplots(1, 3, figsize=(12, 3.8))
    names = [r["label"] for r in done]
    for ax, (key, p99, title) in zip(
        axes,
        [("mean_e2e_latency_ms", "p99_e2e_latency_ms", "E2E (s)"),
         ("mean_ttft_ms", "p99_ttft_ms", "TTFT (s)"), ("mean_tpot_ms", "p99_tpot_ms", "TPOT (ms)")],
        strict=True,
    ):  # fmt: skip
        scale = 1.0 if "tpot" in key else 1000.0
        xs = range(len(done))
        ax.bar([x - 0.2 for x in xs], [r[key] / scale for r in done], 0.4, label="mean")
        ax.bar([x + 0.2 for x in xs], [(r[p99] or 0) / scale for r in done], 0.4, label="P99")
        ax.set_xticks(list(xs), names, rotation=30, ha="right", fontsize=8)
        ax.set_title(title)
    axes[0].legend()
    fig.suptitle(f"Policies on the same requests ({kind})")
    fig.tight_layout()
    fig.savefig(path, dpi=90)
    plt.close(fig)
