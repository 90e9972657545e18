"""Soak: the router's memory under a long steady load (not a pytest suite; run it by hand).

    python benchmarks/soak_router.py [--minutes 10] [--clients 200] [--workers 4] [--time-scale 0.25]

Starts emulated workers and a router (`python -m l4_sglang.launch_router`, policy l4) as processes
on loopback ports, then keeps `--clients` streaming clients busy (closed loop: /generate and
/v1/chat/completions streams of 8-64 tokens, one in 20 a client that leaves mid-stream, one in 20 a
bad request). Every 10 s it prints the router's VmRSS from /proc; at the end, the RSS growth from the
end of the first minute (warm-up) to the end, requests served and errors. Exit status 1 if a client
saw an unexpected error.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import re
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

import aiohttp

MODEL = "meta-llama/Meta-Llama-3-8B"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def rss_kib(pid: int) -> int:
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))


def wait_for(predicate, timeout: float = 60.0):
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        value = predicate()
        if value:
            return value
        time.sleep(0.1)
    raise RuntimeError("timed out")


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url + "/health", timeout=2) as r:
            return r.status == 200
    except OSError:
        return False


class Stats:
    def __init__(self) -> None:
        self.ok = self.left = self.bad = 0
        self.errors: list[str] = []


async def one(session: aiohttp.ClientSession, url: str, rng: random.Random, stats: Stats) -> None:
    tokens = rng.randint(8, 64)
    kind = rng.random()
    if kind < 0.05:  # a bad request: a clear 4xx
        async with session.post(url + "/v1/chat/completions", data=b"{oops") as resp:
            if resp.status != 400 or "error" not in await resp.json():
                stats.errors.append(f"bad request answered {resp.status}")
            stats.bad += 1
        return
    if kind < 0.5:
        route = "/generate"
        body = {"input_ids": [rng.randrange(1, 30000) for _ in range(rng.randint(16, 512))], "stream": True}
        body["sampling_params"] = {"max_new_tokens": tokens, "ignore_eos": True}
    else:
        route = "/v1/chat/completions"
        words = " ".join(f"w{rng.randrange(1000)}" for _ in range(rng.randint(4, 200)))
        body = {"model": MODEL, "messages": [{"role": "user", "content": words}], "max_tokens": tokens}
        body.update(stream=True, ignore_eos=True)
    leave = kind > 0.95
    async with session.post(url + route, json=body) as resp:
        if resp.status != 200:
            stats.errors.append(f"{route} answered {resp.status}: {(await resp.text())[:200]}")
            return
        last = b""
        async for line in resp.content:
            if line.startswith(b"data: "):
                last = line[6:].strip()
                if leave:
                    stats.left += 1
                    return  # leaves mid-stream: the connection is closed
        if last != b"[DONE]":
            stats.errors.append(f"{route} stream ended without [DONE]")
        else:
            stats.ok += 1


async def client_loop(url: str, seed: int, stop_at: float, stats: Stats) -> None:
    rng = random.Random(seed)
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=120)) as session:
        while time.monotonic() < stop_at:
            try:
                await one(session, url, rng, stats)
            except (aiohttp.ClientError, TimeoutError) as e:
                stats.errors.append(f"{type(e).__name__}: {e}")


async def soak(url: str, pid: int, minutes: float, clients: int) -> int:
    stats = Stats()
    started = time.monotonic()
    stop_at = started + minutes * 60
    tasks = [asyncio.ensure_future(client_loop(url, i, stop_at, stats)) for i in range(clients)]
    samples: list[tuple[float, int]] = []
    while not all(t.done() for t in tasks):
        await asyncio.sleep(10)
        t, rss = time.monotonic() - started, rss_kib(pid)
        samples.append((t, rss))
        print(
            f"t={t:6.0f} s  router RSS {rss / 1024:7.1f} MiB  ok {stats.ok}  errors {len(stats.errors)}",
            flush=True,
        )
    await asyncio.gather(*tasks)
    warm = next((rss for t, rss in samples if t >= 60), samples[0][1])
    end = samples[-1][1]
    print(
        json.dumps(
            {
                "minutes": minutes,
                "clients": clients,
                "completed_streams": stats.ok,
                "clients_left_mid_stream": stats.left,
                "bad_requests": stats.bad,
                "errors": len(stats.errors),
                "rss_mib_after_warmup": round(warm / 1024, 1),
                "rss_mib_end": round(end / 1024, 1),
                "rss_growth_mib": round((end - warm) / 1024, 1),
                "rss_mib_max": round(max(r for _, r in samples) / 1024, 1),
            }
        )
    )
    for e in stats.errors[:5]:
        print("error:", e)
    return 1 if stats.errors else 0


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--minutes", type=float, default=10.0)
    p.add_argument("--clients", type=int, default=200)
    p.add_argument("--workers", type=int, default=4)
    p.add_argument("--time-scale", type=float, default=0.25)
    args = p.parse_args()
    logs = Path(tempfile.mkdtemp(prefix="l4-soak-"))
    procs = []

    def spawn(name: str, *argv: str) -> subprocess.Popen:
        out = open(logs / f"{name}.log", "wb")  # noqa: SIM115 - closed with the process
        proc = subprocess.Popen([sys.executable, "-m", *argv], stdout=out, stderr=subprocess.STDOUT)
        procs.append(proc)
        return proc

    try:
        urls = []
        for i in range(args.workers):
            port = free_port()
            spawn(
                f"worker{i}",
                "l4_sglang.emulated_worker",
                "--port",
                str(port),
                "--time-scale",
                str(args.time_scale),
            )
            urls.append(f"http://127.0.0.1:{port}")
        for u in urls:
            wait_for(lambda u=u: healthy(u))
        port = free_port()
        router = spawn(
            "router", "l4_sglang.launch_router", "--port", str(port), "--worker-urls", *urls,
            "--worker-time-scale", str(args.time_scale), "--log-level", "warning",
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        wait_for(lambda: healthy(url))
        print(f"router pid {router.pid} on {url}, {args.workers} workers, logs in {logs}", flush=True)
        return asyncio.run(soak(url, router.pid, args.minutes, args.clients))
    finally:
        for proc in procs:
            if proc.poll() is None:
                os.kill(proc.pid, signal.SIGTERM)
        for proc in procs:
            try:
                proc.wait(40)
            except subprocess.TimeoutExpired:
                proc.kill()


if __name__ == "__main__":
    sys.exit(main())
