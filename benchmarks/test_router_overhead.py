"""What a router adds to a tiny request: ours against SGLang's gateway (smg), same worker, one run.

One emulated worker (`--time-scale 0.001`, so its own steps take microseconds)
serves tiny non-streaming /generate requests (4 prompt ids, 4 new tokens)
asked four ways: directly, through our router (`round_robin`, and `l4`), and
through `python -m smg launch --policy round_robin`. Every target runs as its
own process; the client is this process.

Our router sends these as plain (non-streaming) worker requests: they are
short and neither policy can move them here (l4 has one stage of one
worker). `--streamed-legs` runs our routers with `--plain-max-new-tokens 0`
instead, which measures the streamed legs that a request the policy may
move (or a client stream) takes.

- latency: sequential requests on one keep-alive connection, the targets
  interleaved one request at a time (so drift hits all alike); median and
  p99 per target, and what each router adds to the direct median;
- rate: the most requests per second each target completes with CONCURRENCY
  requests in flight (aiohttp client, fixed request count).

On a 2-core machine the client, the router and the worker share the CPUs,
so the numbers are relative: read the ratios. Nothing here asserts on
wall-clock numbers.

    python -m pytest benchmarks/test_router_overhead.py -s
    python benchmarks/test_router_overhead.py [--quick] [--streamed-legs]
"""

from __future__ import annotations

import asyncio
import http.client
import json
import os
import socket
import statistics
import subprocess
import sys
import time
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import aiohttp

REPO = Path(__file__).resolve().parents[1]
BODY = {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4, "ignore_eos": True}}
CONCURRENCY = 32


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _start(args: list[str]) -> subprocess.Popen:
    env = dict(os.environ)  # the installed package, as in the tests
    return subprocess.Popen(
        [sys.executable, *args], env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL
    )


def _wait(url: str, proc: subprocess.Popen, ready=None, timeout: float = 60.0) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if proc.poll() is not None:
            raise RuntimeError(f"{url}: the process exited with {proc.returncode}")
        try:
            if ready is None:
                urllib.request.urlopen(url + "/health", timeout=1).close()
                return
            if ready():
                return
        except OSError:
            pass
        if time.monotonic() > deadline:
            raise RuntimeError(f"{url} did not become ready")
        time.sleep(0.05)


def _smg_ready(url: str) -> bool:
    with urllib.request.urlopen(url + "/workers", timeout=1) as resp:
        workers = json.loads(resp.read()).get("workers", [])
    return any(w.get("is_healthy") for w in workers)


@dataclass
class Target:
    name: str
    url: str
    proc: subprocess.Popen | None = None


def _one(conn: http.client.HTTPConnection, payload: bytes) -> float:
    t0 = time.perf_counter()
    conn.request("POST", "/generate", payload, {"Content-Type": "application/json"})
    resp = conn.getresponse()
    body = resp.read()
    elapsed = time.perf_counter() - t0
    if resp.status != 200:
        raise RuntimeError(f"HTTP {resp.status}: {body[:200]!r}")
    return elapsed


def latencies(targets: list[Target], n: int, warmup: int = 50) -> dict[str, list[float]]:
    payload = json.dumps(BODY).encode()
    conns = {}
    for t in targets:
        host, port = t.url.removeprefix("http://").split(":")
        conns[t.name] = http.client.HTTPConnection(host, int(port), timeout=30)
    out: dict[str, list[float]] = {t.name: [] for t in targets}
    try:
        for i in range(warmup + n):
            for t in targets:
                x = _one(conns[t.name], payload)
                if i >= warmup:
                    out[t.name].append(x)
    finally:
        for c in conns.values():
            c.close()
    return out


async def _rate(url: str, n: int, concurrency: int) -> float:
    connector = aiohttp.TCPConnector(limit=concurrency)
    async with aiohttp.ClientSession(connector=connector, timeout=aiohttp.ClientTimeout(total=120)) as s:
        todo = iter(range(n))

        async def client():
            for _ in todo:
                async with s.post(url + "/generate", json=BODY) as resp:
                    await resp.read()
                    if resp.status != 200:
                        raise RuntimeError(f"HTTP {resp.status}")

        await asyncio.gather(*(client() for _ in range(concurrency)))  # warm the connections
        todo = iter(range(n))
        t0 = time.perf_counter()
        await asyncio.gather(*(client() for _ in range(concurrency)))
        return n / (time.perf_counter() - t0)


def rate(url: str, n: int, concurrency: int = CONCURRENCY) -> float:
    return asyncio.run(_rate(url, n, concurrency))


def run(quick: bool = False, streamed_legs: bool = False) -> dict:
    n_lat, n_rate = (150, 600) if quick else (400, 2000)
    started: list[subprocess.Popen] = []
    try:
        wport = _free_port()
        worker = _start(["-m", "l4_sglang.emulated_worker", "--port", str(wport), "--time-scale", "0.001"])
        started.append(worker)
        wurl = f"http://127.0.0.1:{wport}"
        _wait(wurl, worker)
        targets = [Target("direct", wurl, worker)]
        for policy in ("round_robin", "l4"):
            port = _free_port()
            args = ["-m", "l4_sglang.launch_router", "--worker-urls", wurl, "--port", str(port)]
            if streamed_legs:
                args += ["--plain-max-new-tokens", "0"]
            proc = _start([*args, "--policy", policy, "--log-level", "warning"])
            started.append(proc)
            targets.append(Target(f"ours ({policy})", f"http://127.0.0.1:{port}", proc))
            _wait(targets[-1].url, proc)
        port = _free_port()
        smg = _start(
            ["-m", "smg", "launch", "--worker-urls", wurl, "--port", str(port), "--policy", "round_robin",
             "--log-level", "warn"]
        )  # fmt: skip
        started.append(smg)
        smg_url = f"http://127.0.0.1:{port}"
        _wait(smg_url, smg, ready=lambda: _smg_ready(smg_url))
        targets.append(Target("smg (round_robin)", smg_url, smg))

        lat = latencies(targets, n_lat)
        rates = {t.name: rate(t.url, n_rate) for t in targets}
    finally:
        for p in started:
            p.terminate()
        for p in started:
            try:
                p.wait(10)
            except subprocess.TimeoutExpired:
                p.kill()

    direct = statistics.median(lat["direct"])
    report: dict = {"machine_cpus": os.cpu_count(), "requests_latency": n_lat, "requests_rate": n_rate}
    report["worker_legs"] = "streamed" if streamed_legs else "plain"
    rows = {}
    for name, xs in lat.items():
        xs = sorted(xs)
        med = statistics.median(xs)
        rows[name] = {
            "median_ms": med * 1e3,
            "p99_ms": xs[int(0.99 * (len(xs) - 1))] * 1e3,
            "added_median_ms": (med - direct) * 1e3,
            "rate_rps": rates[name],
        }
    report["targets"] = rows
    smg_added = rows["smg (round_robin)"]["added_median_ms"]
    for name in ("ours (round_robin)", "ours (l4)"):
        r = rows[name]
        r["added_vs_smg"] = r["added_median_ms"] / smg_added if smg_added > 0 else float("inf")
        r["rate_vs_smg"] = r["rate_rps"] / rows["smg (round_robin)"]["rate_rps"]

    print(
        f"\nrouter overhead: tiny /generate (4 ids in, 4 out), one emulated worker, {os.cpu_count()} CPUs, "
        f"our worker legs {report['worker_legs']}"
    )
    print(
        f"{'target':<20} {'median ms':>10} {'p99 ms':>8} {'added ms':>9} {'req/s':>8} "
        f"{'added/smg':>10} {'rate/smg':>9}"
    )
    for name, r in rows.items():
        extra = f"{r['added_vs_smg']:>10.2f} {r['rate_vs_smg']:>9.2f}" if "added_vs_smg" in r else ""
        print(
            f"{name:<20} {r['median_ms']:>10.3f} {r['p99_ms']:>8.3f} {r['added_median_ms']:>9.3f} "
            f"{r['rate_rps']:>8.0f} {extra}"
        )
    return report


def test_router_overhead():
    report = run(quick=bool(os.environ.get("L4_BENCH_QUICK")))
    assert set(report["targets"]) == {"direct", "ours (round_robin)", "ours (l4)", "smg (round_robin)"}
    assert all(r["rate_rps"] > 0 for r in report["targets"].values())  # completeness, not speed


if __name__ == "__main__":
    print(json.dumps(run(quick="--quick" in sys.argv, streamed_legs="--streamed-legs" in sys.argv), indent=1))
