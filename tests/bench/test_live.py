"""`python -m l4_sglang.bench --mode live`: real HTTP on loopback against emulated workers, through
our router (launched as `python -m l4_sglang.launch --backend emulated`) and through smg."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
from bench_cli import run_cli

from l4_sglang.bench import oracle_e2e_s
from l4_sglang.bench.live import LiveSettings, prompt_ids, replay
from l4_sglang.core import CostModel
from l4_sglang.text.builtin import VOCAB_SIZE
from l4_sglang.worker.prefix_cache import BLOCK_SIZE
from l4_sglang.worker.server import BackgroundWorker, WorkerSettings

SCALE = 0.2
KEYS = [
    "completed",
    "duration",
    "request_throughput",
    "output_throughput",
    *(f"{s}_{m}_ms" for m in ("e2e_latency", "ttft", "tpot", "itl") for s in ("mean", "median", "p99")),
    "migrations",
    "slo_attainment",
    "mean_e2e_over_oracle",
    "simulated",
    "emulated",
    "worker_time_scale",
    "rate_scale",
]


@dataclass(frozen=True)
class Req:
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _get(url: str):
    with urllib.request.urlopen(url, timeout=2) as resp:
        return json.loads(resp.read())


def _wait(predicate, proc: subprocess.Popen, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise AssertionError(f"process exited with {proc.returncode}")
        try:
            value = predicate()
            if value:
                return value
        except (OSError, ValueError, KeyError):
            pass
        time.sleep(0.1)
    raise AssertionError("not ready in time")


def _start(*args: str, log: Path) -> subprocess.Popen:
    # The installed package, in its own process group (stopped with its children).
    out = open(log, "wb")  # noqa: SIM115 (closed with the process)
    return subprocess.Popen(
        [sys.executable, *args], stdout=out, stderr=subprocess.STDOUT, start_new_session=True
    )


def _stop(proc: subprocess.Popen) -> None:
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(15)
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(5)


@pytest.fixture(scope="module")
def trace(tmp_path_factory) -> Path:
    """20 Mooncake-format requests over 6 s, two pairs sharing a prefix block."""
    rng = np.random.default_rng(5)
    path = tmp_path_factory.mktemp("trace") / "t.jsonl"
    rows = []
    for i in range(20):
        prompt = int(rng.choice([300, 1500, 6000]))
        blocks = -(-prompt // BLOCK_SIZE)
        hashes = [1000 * i + b for b in range(blocks)]
        if i in (3, 4):
            hashes[0] = 7  # a shared first block
        output = int(rng.integers(5, 60))
        rows.append(
            {
                "timestamp": 3000 * (i // 10),
                "input_length": prompt,
                "output_length": output,
                "hash_ids": hashes,
            }
        )
    path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    return path


@pytest.fixture(scope="module")
def cluster(tmp_path_factory):
    """Our router (l4) in front of 2 emulated workers at time scale SCALE."""
    logs = tmp_path_factory.mktemp("logs")
    port = _free_port()
    proc = _start(
        "-m", "l4_sglang.launch", "--backend", "emulated", "--num-instances", "2", "--policy", "l4",
        "--port", str(port), "--time-scale", str(SCALE), log=logs / "launch.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:
        workers = _wait(lambda: [w["url"] for w in _get(url + "/workers")["workers"] if w["healthy"]], proc)
        _wait(lambda: len(_get(url + "/workers")["workers"]) == 2 and _get(url + "/health") is not None, proc)
        yield url, [w["url"] for w in _get(url + "/workers")["workers"]] or workers, logs
    finally:
        _stop(proc)


def test_prompt_ids_follow_hash_ids():
    a = prompt_ids(1200, [5, 6, 7])
    b = prompt_ids(1100, [5, 6, 9])
    c = prompt_ids(600, [8, 6])
    assert len(a) == 1200 and len(b) == 1100 and len(c) == 600
    assert a[:1024] == b[:1024]  # same ids, same blocks
    assert a[1024:1100] != b[1024:1100]
    assert c[512:] == a[512:600]  # a block is its id's, wherever it sits (trace ids are chained)
    assert c[:512] != a[:512]
    assert all(0 <= x < VOCAB_SIZE for x in a + b + c)
    with pytest.raises(ValueError, match="invalid hash_ids"):
        prompt_ids(1200, [5, 6])


@pytest.mark.parametrize("scale", [0.2, 0.5])
def test_one_request_alone_takes_its_oracle_in_model_seconds(scale):
    # Against a worker directly: the measured times, divided by the scale, are the cost model's.
    # Multiplying instead of dividing would be off by scale**2 (25x at 0.2).
    cm = CostModel.load()
    prompt, output = 3000, 120
    with BackgroundWorker(WorkerSettings(port=0, time_scale=scale)) as w:
        live = replay([Req(0.0, prompt, output)], LiveSettings(url=w.url, time_scale=scale))
    (rec,) = live.result.records
    assert rec.failed is None and len(rec.token_times) == output
    oracle = oracle_e2e_s(cm, prompt, output)
    assert rec.e2e_s == pytest.approx(oracle, rel=0.15, abs=0.02 / scale), (rec.e2e_s, oracle)
    assert rec.ttft_s == pytest.approx(cm.prefill_time(prompt), rel=0.3, abs=0.02 / scale)
    assert live.migrations is None and live.instances is None and live.emulated is None


def test_arrivals_are_stretched_by_the_time_scale():
    # Three requests 2 model seconds apart leave the client 2 * scale real seconds apart, and
    # their records' arrivals are back in model seconds.
    scale = 0.25
    reqs = [Req(10.0 + 2 * i, 200, 4) for i in range(3)]
    with BackgroundWorker(WorkerSettings(port=0, time_scale=scale)) as w:
        t0 = time.perf_counter()
        live = replay(reqs, LiveSettings(url=w.url, time_scale=scale))
        wall = time.perf_counter() - t0
    arrivals = [r.arrival_s for r in live.result.records]
    assert arrivals[0] == pytest.approx(10.0, abs=0.01)
    assert np.diff(arrivals) == pytest.approx([2.0, 2.0], abs=0.1)
    assert 4 * scale <= wall < 4 * scale + 1.5
    assert live.max_send_lag_s < 0.2


def test_live_cli_through_our_router(cluster, trace, tmp_path):
    url, _, _ = cluster
    out = tmp_path / "live"
    proc = run_cli(
        "--mode", "live", "--url", url, "--trace", str(trace), "--worker-time-scale", str(SCALE),
        "--rate-scale", "2", "--output-dir", str(out),
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr
    assert "[l4 rate 2]" in proc.stderr and "20/20 done" in proc.stderr
    run = json.loads((out / "l4.json").read_text())
    assert [k for k in KEYS if k not in run] == []
    assert run["simulated"] is False and run["mode"] == "live" and run["emulated"] is True
    assert run["policy"] == "l4" and run["instances"] == 2 and run["worker_time_scale"] == SCALE
    assert run["completed"] == 20 and run["failed"] == 0
    assert isinstance(run["migrations"], int) and run["migrations"] >= 0
    assert run["mean_e2e_over_oracle"] >= 0.9  # model seconds: not faster than the request alone
    assert run["max_send_lag_s"] < 0.5
    assert 0.0 <= run["worker_lost_share"] < 0.5  # read from the workers' /server_info
    # The trace spans ~6 s at rate 1 (3 s windows, jittered): ~3 s at rate 2, in model seconds.
    assert 1.5 < run["duration"] < 3.0 + 20
    summary = json.loads((out / "summary.json").read_text())
    assert summary["config"]["simulated"] is False and summary["runs"] == [run]
    md = (out / "summary.md").read_text()
    assert md.startswith("# Live benchmark (over HTTP, emulated workers)")
    assert (out / "e2e_cdf.png").is_file()
    stages = json.loads((out / "l4_stages.json").read_text())
    assert stages["simulated"] is False and stages["layouts"]
    assert all(sum(x["instances"]) == 2 for x in stages["layouts"])
    assert (out / "stages_l4.png").is_file()


def test_live_cli_through_smg(cluster, trace, tmp_path):
    _, workers, logs = cluster
    port = _free_port()
    smg = _start(
        "-m", "smg", "launch", "--worker-urls", *workers, "--port", str(port), "--policy", "round_robin",
        "--log-level", "warn", "--shutdown-grace-period-secs", "0",
        "--prometheus-port", str(_free_port()), log=logs / "smg.log",
    )  # fmt: skip
    url = f"http://127.0.0.1:{port}"
    try:

        def ready():
            listed = _get(url + "/workers")["workers"]
            return len([w for w in listed if w.get("is_healthy") and w.get("engine_load")]) == 2

        _wait(ready, smg)
        out = tmp_path / "smg"
        proc = run_cli(
            "--mode", "live", "--url", url, "--trace", str(trace), "--worker-time-scale", str(SCALE),
            "--policies", "smg", "--quiet", "--output-dir", str(out),
        )  # fmt: skip
    finally:
        _stop(smg)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr == ""
    run = json.loads((out / "smg.json").read_text())
    assert run["completed"] == 20 and run["failed"] == 0
    assert run["migrations"] is None and run["simulated"] is False and run["emulated"] is True
    assert run["instances"] == 2
    assert not list(out.glob("stages_*.png"))


@pytest.mark.parametrize(
    "args, message",
    [
        (["--mode", "live"], "--mode live needs --url"),
        (["--mode", "live", "--url", "http://x", "--no-het"], "--no-het is for --mode sim"),
        (["--mode", "live", "--url", "http://x", "--policies", "a,b"], "takes one --policies label"),
        (
            ["--mode", "live", "--url", "http://x", "--worker-time-scale", "0"],
            "--worker-time-scale must be > 0",
        ),
        (["--url", "http://x", "--instances", "2"], "--url is for --mode live"),
        (["--worker-time-scale", "0.5", "--instances", "2"], "--worker-time-scale is for --mode live"),
        ([], "--mode sim needs --instances"),
    ],
)
def test_bad_live_arguments_exit_2(tmp_path, trace, args, message):
    proc = run_cli("--trace", str(trace), "--output-dir", str(tmp_path / "o"), *args)
    assert proc.returncode == 2
    assert message in proc.stderr
    assert not (tmp_path / "o").exists()
