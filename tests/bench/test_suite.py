"""`python -m l4_sglang.bench suite` on a tiny configuration, and the bar it checks."""

from __future__ import annotations

import json

import pytest
from bench_cli import run_cli

from l4_sglang.bench import suite

WORKLOADS = ["azure_code", "bimodal", "nonstationary"]
LOADS = ["light", "past"]


@pytest.fixture(scope="module")
def tiny(tmp_path_factory):
    out = tmp_path_factory.mktemp("suite")
    proc = run_cli(
        "suite", "--output-dir", str(out), "--instances", "2", "--seeds", "1",
        "--requests", "100", "--nonstationary-requests", "100",
        "--workloads", ",".join(WORKLOADS), "--loads", ",".join(LOADS), "--knee-steps", "2",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    return out, proc, json.loads((out / "suite.json").read_text())


def test_every_cell_has_every_policy(tiny):
    _, _, doc = tiny
    assert doc["config"]["simulated"] is True
    assert doc["config"]["policies"] == list(suite.SUITE_POLICIES)
    assert [(c["workload"], c["load"]) for c in doc["cells"]] == [(w, ld) for w in WORKLOADS for ld in LOADS]
    for c in doc["cells"]:
        n = c["requests"]["1"]
        assert 80 <= n <= 125
        for pol in suite.SUITE_POLICIES:
            m = c["policies"][pol]
            assert m["mean_e2e_ms"] > 0 and m["p99_e2e_ms"] >= m["mean_e2e_ms"] * 0.5
            assert [r["seed"] for r in m["per_seed"]] == [1]
            assert m["per_seed"][0]["completed"] == n
            assert m["mean_e2e_ms"] == m["per_seed"][0]["mean_e2e_ms"]
        assert c["policies"]["static_oracle"]["per_seed"][0]["static_split"]["layouts_simulated"] >= 1
    ns = [c for c in doc["cells"] if c["workload"] == "nonstationary"]
    assert all(c["phase_s"] > 0 for c in ns) and "phase_s" not in doc["cells"][0]


def test_loads_are_multiples_of_a_bracketed_knee(tiny):
    _, _, doc = tiny
    for w in WORKLOADS:
        knee = doc["knees"][w]
        below = [p["scale"] for p in knee["sweep"] if p["rr_e2e_over_oracle"] < suite.KNEE_RATIO]
        above = [p["scale"] for p in knee["sweep"] if p["rr_e2e_over_oracle"] >= suite.KNEE_RATIO]
        assert below and above
        assert max(below) <= knee["scale"] <= min(above)
        cells = {c["load"]: c for c in doc["cells"] if c["workload"] == w}
        for load in LOADS:
            assert cells[load]["rate_scale"] == pytest.approx(knee["scale"] * suite.LOADS[load])


def test_bar_follows_the_numbers(tiny):
    out, _, doc = tiny
    for c in doc["cells"]:
        pol, b = c["policies"], c["bar"]
        blind = min(suite.LENGTH_BLIND, key=lambda p: pol[p]["mean_e2e_ms"])
        assert b["best_length_blind"] == blind
        vs_blind = pol["l4"]["mean_e2e_ms"] / pol[blind]["mean_e2e_ms"]
        vs_oracle = pol["l4"]["mean_e2e_ms"] / pol["static_oracle"]["mean_e2e_ms"]
        p99 = pol["l4"]["p99_e2e_ms"] / pol[blind]["p99_e2e_ms"]
        assert b["l4_over_best_blind_mean"] == pytest.approx(vs_blind)
        assert b["l4_over_oracle_mean"] == pytest.approx(vs_oracle)
        assert b["l4_over_best_blind_p99"] == pytest.approx(p99)
        blind_limit = 0.6 if c["load"] == "past" else 0.9
        oracle_limit = 0.75 if c["workload"] == "nonstationary" else 1.0
        assert b["meets_bar"] == (vs_blind <= blind_limit and vs_oracle <= oracle_limit and p99 <= 1.0)
    md = (out / "suite.md").read_text()
    assert md.startswith("# Policy suite (SIMULATED)")
    met = [c for c in doc["cells"] if c["bar"]["meets_bar"]]
    assert f"## Cells meeting the bar (simulated): {len(met)} of {len(doc['cells'])}" in md
    for c in met:
        assert f"- {c['workload']} / {c['load']}" in md
    lines = md.splitlines()
    for c in doc["cells"]:
        row = [ln for ln in lines if ln.startswith(f"| {c['workload']} | {c['load']} |")]
        assert len(row) == 1
        assert row[0].endswith(" | yes |") == bool(c["bar"]["meets_bar"])
    for w in WORKLOADS:
        assert sum(ln.startswith(f"| {w} | {doc['knees'][w]['scale']:.3g} |") for ln in lines) == 1
    assert "2x the mean oracle E2E" in md
    ns = ", ".join(
        f"{c['load']}: {c['phase_s']:.0f} s" for c in doc["cells"] if c["workload"] == "nonstationary"
    )
    assert f"Non-stationary phases (chat, documents, chat) last {ns} each." in md


def test_progress_on_stderr(tiny):
    _, proc, _ = tiny
    assert "[suite bimodal] knee at rate scale" in proc.stderr
    assert "[suite nonstationary] past: seed 1 l4: mean E2E" in proc.stderr
    assert "cells meet the bar" in proc.stderr


def _cell(workload, load, l4, blind, oracle):
    pols = {"l4": {"mean_e2e_ms": l4[0], "p99_e2e_ms": l4[1]}}
    pols["round_robin"] = {"mean_e2e_ms": blind[0], "p99_e2e_ms": blind[1]}
    pols["least_load"] = {"mean_e2e_ms": blind[0] * 2, "p99_e2e_ms": 1.0}  # lower P99, worse mean
    if oracle is not None:
        pols["static_oracle"] = {"mean_e2e_ms": oracle, "p99_e2e_ms": oracle}
    return {"workload": workload, "load": load, "policies": pols}


@pytest.mark.parametrize(
    "cell, meets",
    [
        (_cell("bimodal", "knee", (8.9, 10), (10, 10), 8.9), True),
        (_cell("bimodal", "knee", (9.1, 10), (10, 10), 9.1), False),  # > 0.9x blind
        (_cell("bimodal", "past", (8, 10), (10, 10), 8), False),  # past the knee: 0.6x
        (_cell("bimodal", "past", (6, 10), (10, 10), 6), True),
        (_cell("bimodal", "knee", (8, 11), (10, 10), 8), False),  # P99 over the best blind's
        (_cell("bimodal", "knee", (8, 10), (10, 10), 7.9), False),  # worse than the oracle
        (_cell("nonstationary", "knee", (8, 10), (10, 10), 10), False),  # needs 0.75x the oracle
        (_cell("nonstationary", "knee", (7.5, 10), (10, 10), 10), True),
        (_cell("bimodal", "knee", (8, 10), (10, 10), None), None),  # no oracle run: undecided
    ],
)
def test_bar_thresholds(cell, meets):
    b = suite.bar(cell)
    assert b["best_length_blind"] == "round_robin"
    assert b["meets_bar"] is meets


@pytest.mark.parametrize(
    "args, message",
    [
        (["--workloads", "bimodal,nope"], "unknown workload nope"),
        (["--loads", "heavy"], "unknown load heavy"),
        (["--seeds", "a,b"], "invalid --seeds"),
        (["--l4-min-gian", "0.1"], "--l4-min-gian (did you mean --l4-min-gain?)"),
        (["--policies", "round_robin", "--l4-min-gain", "0.1"], "which --policies does not run"),
        (["--traces-dir", "/nonexistent"], "trace file not found: /nonexistent/mooncake"),
    ],
)
def test_suite_bad_arguments_exit_2(tmp_path, args, message):
    proc = run_cli("suite", "--output-dir", str(tmp_path / "o"), *args, timeout=60)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "o").exists()


def test_a_trace_too_small_to_queue_has_no_knee(tmp_path):
    proc = run_cli(
        "suite", "--output-dir", str(tmp_path), "--instances", "4", "--seeds", "0", "--requests", "3",
        "--workloads", "bimodal", "--policies", "l4,round_robin", timeout=120,
    )  # fmt: skip
    assert proc.returncode == 1
    assert "bimodal: no knee: round robin's mean E2E never reached 2x" in proc.stderr
    assert "use more --requests" in proc.stderr


def test_jobs_do_not_change_the_numbers(tiny, tmp_path):
    _, _, doc = tiny
    proc = run_cli(
        "suite", "--output-dir", str(tmp_path), "--instances", "2", "--seeds", "1",
        "--requests", "100", "--nonstationary-requests", "100",
        "--workloads", "bimodal", "--loads", ",".join(LOADS), "--knee-steps", "2", "--jobs", "2", "--quiet",
        timeout=300,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    par = json.loads((tmp_path / "suite.json").read_text())
    assert par["knees"]["bimodal"]["scale"] == doc["knees"]["bimodal"]["scale"]
    want = [c for c in doc["cells"] if c["workload"] == "bimodal"]
    assert [(c["workload"], c["load"]) for c in par["cells"]] == [(c["workload"], c["load"]) for c in want]
    for got, exp in zip(par["cells"], want, strict=True):
        for pol in suite.SUITE_POLICIES:
            assert got["policies"][pol]["mean_e2e_ms"] == exp["policies"][pol]["mean_e2e_ms"]
            assert got["policies"][pol]["p99_e2e_ms"] == exp["policies"][pol]["p99_e2e_ms"]
        assert got["bar"] == exp["bar"]


def test_suite_policy_config_errors_exit_2(tmp_path):
    cfg = tmp_path / "knobs.toml"
    cfg.write_text("[l4]\nmin_gian = 0.1\n")
    proc = run_cli("suite", "--output-dir", str(tmp_path / "o"), "--policy-config", str(cfg), timeout=60)
    assert proc.returncode == 2
    assert f"--policy-config {cfg}: l4.min_gian: unknown knob of l4 (did you mean 'min_gain'?)" in proc.stderr
    assert not (tmp_path / "o").exists()
