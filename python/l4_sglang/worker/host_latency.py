"""Measures this process's own HTTP round trip, to take it out of the modelled request overhead.

A calibration's `request_overhead_s` is what a client saw of real SGLang's
host path on a lone short prompt: its HTTP handling, tokenizer manager and
scheduler hand-off, plus the client's own share. The emulated worker pays an
HTTP path of its own (aiohttp, JSON, the event loop) before it starts waiting
out that overhead, so without a correction a short request comes out a few
milliseconds slow. The cost depends on the machine and its load, so it is
measured at start-up rather than fixed: a throwaway worker with the same
settings on another port answers streamed one-token requests over one
keep-alive connection, and each request's time to first chunk, less the
modelled delay and prefill step it should have waited, is this host's latency.
The probe runs at the worker's own time scale: the event loop's timers wake
late by up to a millisecond each (epoll's resolution), and a request waits on
two of them (its delay, its first step), so that lateness is part of the path.
The probe worker is separate, so the real worker's metrics and cache start empty.
"""

from __future__ import annotations

import dataclasses
import random
import statistics
import time

import aiohttp

from l4_sglang.worker.server import EmulatedWorker, WorkerSettings

PROMPT_TOKENS = 16
WARMUP = 3
BUDGET_S = 2.0  # fewer samples when the modelled wait is long (a slow time scale)


async def _first_chunk_s(session: aiohttp.ClientSession, url: str, ids: list[int]) -> float:
    body = {"input_ids": ids, "sampling_params": {"max_new_tokens": 1}, "stream": True}
    sent = time.perf_counter()
    async with session.post(url + "/generate", json=body) as resp:
        resp.raise_for_status()
        async for line in resp.content:
            if line.startswith(b"data:"):
                first = time.perf_counter() - sent
                break
        else:
            raise RuntimeError("the probe worker's stream ended without a chunk")
        await resp.read()
    return first


async def measure(settings: WorkerSettings, samples: int = 30) -> float:
    """Median host latency in seconds (wall clock), never below zero."""
    probe = EmulatedWorker(dataclasses.replace(settings, port=0, host_latency_s=0.0))
    await probe.start()
    rng = random.Random(0)
    found: list[float] = []
    try:
        assert probe.runner is not None
        top = min(32000, probe.vocab.size)  # ids the probe's own tokenizer accepts
        started = time.perf_counter()
        async with aiohttp.ClientSession() as session:
            for i in range(WARMUP + samples):
                if found and time.perf_counter() - started > BUDGET_S:
                    break
                ids = [rng.randrange(1, top) for _ in range(PROMPT_TOKENS)]
                first = await _first_chunk_s(session, probe.url, ids)
                step = probe.runner.step_log[-1]
                waited = probe.runner.request_delay_s + step.cost_s * probe.runner.time_scale
                if i >= WARMUP:
                    found.append(first - waited)
    finally:
        await probe.stop()
    return max(0.0, statistics.median(found))
