"""`python -m l4_sglang.bench synth`: seeded JSONL traces that the bench replays exactly."""

from __future__ import annotations

import json

import pytest
from bench_cli import run_cli

from l4_sglang.core import CostModel
from l4_sglang.sim import simulate
from l4_sglang.workload import load_trace, synthetic_trace


def test_synth_writes_the_generated_trace_and_the_bench_replays_it_exactly(tmp_path):
    path = tmp_path / "ns.jsonl"
    args = (
        "synth",
        "nonstationary",
        "--output",
        str(path),
        "--rate",
        "3",
        "--duration-s",
        "30",
        "--seed",
        "7",
    )
    proc = run_cli(*args)
    assert proc.returncode == 0, proc.stderr
    assert f"wrote {path}: nonstationary:" in proc.stderr
    want = synthetic_trace("nonstationary", 3.0, 30.0, seed=7)
    rows = [json.loads(line) for line in path.read_text().splitlines()]
    assert [(r["input_length"], r["output_length"]) for r in rows] == [
        (r.prompt_tokens, r.output_tokens) for r in want
    ]
    got = load_trace(path, exact_timestamps=True)
    assert got.arrivals().tolist() == pytest.approx(want.arrivals().tolist(), rel=1e-12, abs=1e-12)

    again = tmp_path / "again.jsonl"
    assert run_cli(*args[:3], str(again), *args[4:]).returncode == 0
    assert again.read_bytes() == path.read_bytes()

    out = tmp_path / "out"
    bench = run_cli(
        "--trace", str(path), "--exact-timestamps", "--policies", "least_load", "--instances", "2",
        "--output-dir", str(out), "--quiet",
    )  # fmt: skip
    assert bench.returncode == 0, bench.stderr
    run = json.loads((out / "least_load.json").read_text())
    sim = simulate(want, "least_load", CostModel.load(), 2).summary()
    assert run["completed"] == len(want)
    assert run["mean_e2e_latency_ms"] == pytest.approx(sim["mean_e2e_latency_ms"], rel=1e-9)


@pytest.mark.parametrize("kind", ["bimodal", "trimodal", "lognormal"])
def test_synth_kinds_and_count(tmp_path, kind):
    path = tmp_path / f"{kind}.jsonl"
    proc = run_cli("synth", kind, "--output", str(path), "--count", "25", "--quiet")
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    assert len(path.read_text().splitlines()) == 25


@pytest.mark.parametrize(
    "args, message",
    [
        (["nope"], "invalid choice: 'nope'"),
        (["bimodal", "--rate", "0"], "--rate must be > 0"),
        (["bimodal", "--long-share", "2"], "invalid long_share"),
        (["trimodal", "--doc-share", "0.2"], "doc_share is for the nonstationary"),
        (["bimodal", "--rat", "1", "--bogus-flag", "2"], "--bogus-flag"),
    ],
)
def test_synth_bad_arguments_exit_2(tmp_path, args, message):
    proc = run_cli("synth", *args, "--output", str(tmp_path / "t.jsonl"))
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "t.jsonl").exists()
