"""How many concurrent streams one emulated worker process keeps in real time, and what --time-scale buys.

For each (time scale, concurrency) it starts `python -m l4_sglang.emulated_worker`
and opens N streaming /generate requests at once (128-token prompts, 256 new
tokens each). It reports:
- slowdown: the measured makespan over the ideal one, the same requests run
  through the engine on a fake clock (cost model x time scale, no CPU limit);
  1.00 means the worker kept up with the modelled GPU (the client's spread in
  opening N connections counts against it);
- dilation: the worker's own busy time over the modelled time of the steps it
  ran (1.00: every step ended on its deadline, give or take 20 ms that later
  steps catch up), and its lag behind step deadlines (mean, p99), both from
  /emulated/steps;
- the worker process's CPU use (100% = one core busy), and the client's.
It measures only: nothing here asserts on wall-clock numbers.

    python -m pytest benchmarks/test_worker_capacity.py -s
    python benchmarks/test_worker_capacity.py [--quick]
"""

from __future__ import annotations

import asyncio
import json
import os
import socket
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

from l4_sglang import CostModel
from l4_sglang.worker.engine import Engine, EngineConfig, Request, SamplingParams

REPO = Path(__file__).resolve().parents[1]
PROMPT_TOKENS = 128
NEW_TOKENS = 256
GRID = {1.0: (16, 64, 256, 512), 0.25: (16, 64, 256), 0.1: (16, 64, 256)}
QUICK_GRID = {1.0: (16, 128), 0.1: (16, 128)}


@dataclass
class Result:
    time_scale: float
    streams: int
    ideal_s: float
    measured_s: float
    mean_ttft_s: float
    dilation: float
    lag_mean_ms: float
    lag_p99_ms: float
    worker_cpu: float
    client_cpu: float
    tokens: int

    @property
    def slowdown(self) -> float:
        return self.measured_s / self.ideal_s

    def row(self) -> str:
        return (
            f"{self.time_scale:>6g} {self.streams:>7d} {self.ideal_s:>8.2f} {self.measured_s:>9.2f} "
            f"{self.slowdown:>8.2f} {self.dilation:>8.2f} {self.mean_ttft_s * 1e3:>8.0f} "
            f"{self.lag_mean_ms:>7.2f} {self.lag_p99_ms:>7.2f} "
            f"{self.worker_cpu:>7.0%} {self.client_cpu:>7.0%} {self.tokens / self.measured_s:>9.0f}"
        )


HEADER = (
    f"{'scale':>6} {'streams':>7} {'ideal_s':>8} {'measured':>9} {'slowdown':>8} {'dilation':>8} "
    f"{'ttft_ms':>8} {'lag_ms':>7} {'p99_ms':>7} {'worker':>7} {'client':>7} {'tok/s':>9}"
)


def ideal_makespan(model: CostModel, streams: int, time_scale: float) -> float:
    p = model.params
    cfg = EngineConfig(
        int(p["kv_capacity_tokens"]), int(p["max_running_requests"]), int(p["chunked_prefill_size"])
    )
    engine = Engine(cfg, model.step_time)
    for i in range(streams):
        params = SamplingParams(max_new_tokens=NEW_TOKENS, ignore_eos=True)
        engine.add(Request(str(i), [i + 1] * PROMPT_TOKENS, params), 0.0)
    now = 0.0
    while (step := engine.plan(now)) is not None:
        now += step.cost_s
        engine.apply(step, now)
    return now * time_scale


def _cpu_seconds(pid: int) -> float:
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


async def _stream(session: aiohttp.ClientSession, url: str, i: int, t0: float) -> tuple[float, int]:
    """(time to first chunk, events) of one stream; chunks are counted, not parsed, to spare the client."""
    body = {
        "input_ids": [i + 1] * PROMPT_TOKENS,
        "sampling_params": {"max_new_tokens": NEW_TOKENS, "ignore_eos": True},
        "stream": True,
    }
    ttft = None
    events = 0
    async with session.post(url + "/generate", json=body) as resp:
        async for data in resp.content.iter_any():
            if ttft is None:
                ttft = time.perf_counter() - t0
            events += data.count(b"\n\n")
    return ttft or 0.0, events


async def _drive(url: str, streams: int) -> tuple[float, list[tuple[float, int]]]:
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(
        connector=connector, timeout=aiohttp.ClientTimeout(total=None)
    ) as session:
        t0 = time.perf_counter()
        results = await asyncio.gather(*(_stream(session, url, i, t0) for i in range(streams)))
        return time.perf_counter() - t0, results


def measure(model: CostModel, time_scale: float, streams: int) -> Result:
    port = _free_port()
    env = dict(os.environ)  # the installed package, as in the tests
    cmd = [
        sys.executable,
        "-m",
        "l4_sglang.emulated_worker",
        "--port",
        str(port),
        "--time-scale",
        str(time_scale),
    ]
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                break
            except OSError:
                if time.monotonic() > deadline or proc.poll() is not None:
                    raise RuntimeError("the worker did not start") from None
                time.sleep(0.05)
        worker_cpu0, client_cpu0 = _cpu_seconds(proc.pid), time.process_time()
        wall, results = asyncio.run(_drive(url, streams))
        worker_cpu = (_cpu_seconds(proc.pid) - worker_cpu0) / wall
        client_cpu = (time.process_time() - client_cpu0) / wall
        with urllib.request.urlopen(url + "/emulated/steps?last=0", timeout=10) as resp:
            log = json.loads(resp.read())
    finally:
        proc.terminate()
        proc.wait(10)
    tokens = sum(events - 1 for _, events in results)  # every event but [DONE] carries one new token
    return Result(
        time_scale=time_scale,
        streams=streams,
        ideal_s=ideal_makespan(model, streams, time_scale),
        measured_s=wall,
        mean_ttft_s=sum(t for t, _ in results) / len(results),
        dilation=(log["modelled_s"] + log["lost_s"]) / log["modelled_s"],
        lag_mean_ms=log["lag_s"]["mean"] * 1e3,
        lag_p99_ms=log["lag_s"]["p99"] * 1e3,
        worker_cpu=worker_cpu,
        client_cpu=client_cpu,
        tokens=tokens,
    )


def run_grid(grid: dict[float, tuple[int, ...]]) -> list[Result]:
    model = CostModel.load("llama3-8b-h100-default")
    print(f"\nemulated worker capacity: {PROMPT_TOKENS}-token prompts, {NEW_TOKENS} new tokens, streaming")
    print(f"machine: {os.cpu_count()} CPUs; worker and client share them")
    print(HEADER)
    results = []
    for scale, counts in grid.items():
        for n in counts:
            r = measure(model, scale, n)
            print(r.row(), flush=True)
            results.append(r)
    return results


def test_worker_capacity():
    results = run_grid(QUICK_GRID if os.environ.get("L4_BENCH_QUICK") else GRID)
    assert all(r.tokens == r.streams * NEW_TOKENS for r in results)  # completeness, not speed


if __name__ == "__main__":
    run_grid(QUICK_GRID if "--quick" in sys.argv else GRID)
