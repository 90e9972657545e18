"""Replay a calibration job's scenarios against an emulated worker and compare.

The worker runs the fitted cost model with the real server's limits (KV
capacity, running requests, chunk size); the same scenario plan and seeds are
sent; per scenario the steady decode step, mean TTFT and mean E2E are set
beside the real engine's.
"""

from __future__ import annotations

import asyncio
import json
import re
import statistics
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

from l4_sglang.profile import job, scenarios


def _mean_e2e(s: dict) -> float | None:
    done = [r["chunks"][-1] - r["sent"] for r in s["requests"] if r["chunks"]]
    return statistics.fmean(done) if done else None


def _mean_ttft(s: dict) -> float | None:
    return statistics.fmean(s["ttft_s"]) if s["ttft_s"] else None


def compare(real: list[dict], emulated: list[dict]) -> list[dict]:
    by_name = {s["name"]: s for s in emulated}
    rows = []
    for r in real:
        e = by_name.get(r["name"])
        if e is None:
            continue
        row = {"scenario": r["name"]}
        for key, get in (
            ("step_s", lambda s: s.get("steady_step_s")),
            ("ttft_s", _mean_ttft),
            ("e2e_s", _mean_e2e),
        ):
            a, b = get(r), get(e)
            row[f"real_{key}"], row[f"emulated_{key}"] = a, b
            row[f"{key}_rel_diff"] = (b / a - 1.0) if a and b else None
        if r["kind"] == "prefill" and len(r["ttft_s"]) > 1:
            # Real SGLang's own spread over repeats of the same prompt, for the reader to weigh a miss.
            lo, hi = min(r["ttft_s"]), max(r["ttft_s"])
            row["real_ttft_min_s"], row["real_ttft_max_s"] = lo, hi
            b = row["emulated_ttft_s"]
            row["emulated_ttft_inside_real_range"] = b is not None and lo <= b <= hi
        rows.append(row)
    return rows


def main(args) -> int:
    real_dir, out = Path(args.real), Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    info = json.loads((real_dir / "server_info.json").read_text())
    real = json.loads((real_dir / "scenarios.json").read_text())
    log = next(real_dir.glob("sglang-*.log")).read_text()
    running = [int(x) for x in re.findall(r"max_running_requests=(\d+)", log)]
    cmd = [
        sys.executable, "-m", "l4_sglang.emulated_worker", "--host", "127.0.0.1", "--port", str(args.port),
        "--cost-model", args.cost_model, "--max-total-tokens", str(info["max_total_num_tokens"]),
        "--chunked-prefill-size", str(info.get("chunked_prefill_size") or 8192),
        "--max-running-requests", str(running[0] if running else 2048), "--skip-tokenizer-init",
        "--context-length", str(info.get("context_length") or 131072),
    ]  # fmt: skip
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{args.port}"
    try:
        job.wait_healthy(url, proc, timeout_s=60)
        results = []
        # The batches exactly as the real run sent them (its plan may be older than ours).
        plan = [
            (s["name"], s["kind"], [r["prompt_tokens"] for r in s["requests"]], s["max_new_tokens"])
            for s in real
            if s["kind"] != "interference"
        ]
        for i, (name, kind, prompts, max_new) in enumerate(plan):
            t0 = time.monotonic()
            r = asyncio.run(scenarios.run_batch(url, name, kind, prompts, max_new, args.seed + i))
            results.append(r.to_dict())
            print(f"{name:26s} emulated in {time.monotonic() - t0:.1f} s", flush=True)
        with urllib.request.urlopen(f"{url}/server_info") as resp:
            emulated_info = json.loads(resp.read())
    finally:
        proc.terminate()
        proc.wait(timeout=30)
    rows = compare(real, results)
    report = {
        "real": str(real_dir),
        "cost_model": args.cost_model,
        "emulated": bool(emulated_info.get("emulated")),
        "rows": rows,
    }
    (out / "replay.json").write_text(json.dumps(report, indent=1))
    header = f"{'scenario':26s} {'step real/emu':>20s} {'TTFT real/emu':>20s} {'E2E real/emu':>20s}"
    print(f"{header}  real TTFT range")
    for row in rows:

        def cell(key: str, row: dict = row) -> str:
            a, b = row[f"real_{key}"], row[f"emulated_{key}"]
            if not a or not b:
                return "-"
            return f"{a:.3f}/{b:.3f} ({b / a - 1:+.0%})"

        spread = ""
        if "real_ttft_min_s" in row:
            inside = "emulated inside" if row["emulated_ttft_inside_real_range"] else "emulated outside"
            spread = f"  {row['real_ttft_min_s']:.3f}-{row['real_ttft_max_s']:.3f} ({inside})"
        cells = f"{cell('step_s'):>20s} {cell('ttft_s'):>20s} {cell('e2e_s'):>20s}"
        print(f"{row['scenario']:26s} {cells}{spread}")
    return 0
