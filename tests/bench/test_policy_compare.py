"""`python -m l4_sglang.bench compare` (issues 7/8's one-call GPU job, docs/gpu/fleet_compare.sh), run
here with the emulated backend: the launcher's L4 router, one of our baselines through launch_router
and smg, flushed and replayed on the same instances, results in $OUT, nothing left running. The GPU
run differs by `--backend sglang`."""

from __future__ import annotations

import importlib.util
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from l4_sglang.bench import fleet_compare

ROOT = Path(__file__).resolve().parents[2]
REAL_GPU = ROOT / "docs/bench/real-gpu"
WORKLOADS = REAL_GPU / "workloads.json"
TRACE = REAL_GPU / "mooncake_conversation_first150s.jsonl"


def test_plan_defaults_and_sglang_flags(tmp_path):
    args, extra = fleet_compare.build_args(
        [
            "--out",
            str(tmp_path),
            "--trace",
            str(TRACE),
            "--workloads",
            str(WORKLOADS),
            "--instances",
            "2",
            "--instances-per-gpu",
            "2",
            "--",
            "--max-running-requests",
            "64",
        ]
    )
    fleet_compare.workload_defaults(args, 2)
    table = json.loads(WORKLOADS.read_text())["workloads"]["2"]
    assert (args.duration_s, args.rate_scale) == (table["duration_s"], table["rate_scale"])
    flags = fleet_compare.sglang_flags(args, extra)
    # K = 2 on one GPU: fraction 0.85 and a KV cap each (what ran on one H200), unless given.
    assert flags[flags.index("--mem-fraction-static") + 1] == "0.85"
    assert flags[flags.index("--max-total-tokens") + 1] == "300000"
    assert flags[-2:] == ["--max-running-requests", "64"]
    given = fleet_compare.sglang_flags(args, ["--mem-fraction-static", "0.8", "--max-total-tokens", "9"])
    assert given.count("--mem-fraction-static") == 1 and given.count("--max-total-tokens") == 1
    targets = fleet_compare.parse_targets("l4,least_load,smg_cache_aware")
    assert [(t.kind, t.policy) for t in targets] == [
        ("launcher", "l4"),
        ("ours", "least_load"),
        ("smg", "cache_aware"),
    ]
    bare, _ = fleet_compare.build_args(["--out", str(tmp_path), "--trace", str(TRACE)])
    with pytest.raises(SystemExit, match="pass --duration-s and --rate-scale"):
        fleet_compare.workload_defaults(bare, 2)  # no --workloads: nothing read from a fixed path
    with pytest.raises(SystemExit, match="unknown policy"):
        fleet_compare.parse_targets("l4,nope")


def test_emulated_job_end_to_end(tmp_path):
    policies = "l4,round_robin" + (",smg_round_robin" if importlib.util.find_spec("smg") else "")
    out, state = tmp_path / "out", tmp_path / "state"
    out.mkdir()
    port = 31000 + os.getpid() % 2000
    env = {**os.environ, "OUT": str(out), "PACK": str(tmp_path / "no-pack")}
    env.pop("JOB_T0", None)
    # No smg archive to unpack here: the wrapper needs one, so call the command as the wrapper would.
    cmd = [sys.executable, "-m", "l4_sglang.bench", "compare", "--out", str(out), "--backend", "emulated"]
    cmd += ["--trace", str(TRACE), "--workloads", str(WORKLOADS)]
    cmd += ["--instances", "2", "--policies", policies, "--duration-s", "6", "--rate-scale", "1"]
    cmd += ["--time-scale", "0.25", "--no-warmup", "--port", str(port), "--state-dir", str(state)]
    proc = subprocess.run(cmd, env=env, cwd=ROOT, capture_output=True, text=True, timeout=240)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    summary = json.loads((out / "summary.json").read_text())
    rows = {r["label"]: r for r in summary["runs"]}
    assert list(rows) == policies.split(",")
    for r in rows.values():
        assert r["completed"] > 0 and r["failed"] == 0 and r["emulated"] is True
    assert rows["l4"]["migrations"] is not None and "stage_layouts" in rows["l4"]
    assert summary["config"]["final"] and summary["config"]["left_over"] == []
    assert sorted(p.name for p in out.iterdir()) == [
        "compare.png", "job.log", "results.tar.gz", "summary.json", "summary.md",
    ]  # fmt: skip
    with tarfile.open(out / "results.tar.gz") as tar:
        names = tar.getnames()
    assert "results/l4/l4.json" in names and "results/l4/stages_l4.png" in names
    assert "logs/launch.log" in names and "results/round_robin/summary.json" in names
    assert "no process of this job left" in (out / "job.log").read_text()
