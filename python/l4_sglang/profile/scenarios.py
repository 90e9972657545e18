"""Controlled request batches against a live SGLang server, timed per token.

Each scenario sends `input_ids` prompts (random ids, so the prefix cache
never hits; the cache is flushed between scenarios anyway) with
`ignore_eos`, streams every request, and records the arrival time of every
chunk. The steady decode step time is the median inter-chunk gap over the
window in which every request of the batch is decoding.
"""

from __future__ import annotations

import asyncio
import itertools
import json
import random
import statistics
import time
from dataclasses import asdict, dataclass, field

import aiohttp

VOCAB = 128_000


@dataclass
class RequestTrace:
    prompt_tokens: int
    max_new_tokens: int
    sent: float = 0.0
    chunks: list[float] = field(default_factory=list)
    output_tokens: int = 0
    error: str = ""


@dataclass
class ScenarioResult:
    name: str
    kind: str
    prompts: list[int]
    max_new_tokens: int
    requests: list[RequestTrace]
    # Derived: median gap while all requests decode (a decode step with this batch).
    steady_step_s: float | None = None
    steady_requests: int = 0
    ttft_s: list[float] = field(default_factory=list)
    # Lone-prompt rounds only: the order of every round (sizes), the same in each size's result.
    order: list[list[int]] = field(default_factory=list)

    def to_dict(self) -> dict:
        d = asdict(self)
        for r in d["requests"]:
            r["chunks"] = [round(t, 6) for t in r["chunks"]]
        return d


def random_ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, VOCAB) for _ in range(n)]


async def stream_one(
    session: aiohttp.ClientSession, url: str, ids: list[int], max_new: int, trace: RequestTrace
) -> None:
    body = {
        "input_ids": ids,
        "sampling_params": {"max_new_tokens": max_new, "ignore_eos": True, "temperature": 0},
        "stream": True,
    }
    trace.sent = time.perf_counter()
    try:
        async with session.post(f"{url}/generate", json=body) as resp:
            if resp.status != 200:
                trace.error = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for raw in resp.content:
                line = raw.decode().strip()
                if not line.startswith("data:"):
                    continue
                payload = line[5:].strip()
                if payload == "[DONE]":
                    break
                now = time.perf_counter()
                chunk = json.loads(payload)
                count = len(chunk.get("output_ids", []))
                # One chunk may carry several tokens; record one time per new token.
                trace.chunks.extend([now] * max(0, count - trace.output_tokens))
                trace.output_tokens = max(trace.output_tokens, count)
    except Exception as e:  # recorded, not raised: one bad request must not end the run
        trace.error = repr(e)


def ttfts(traces: list[RequestTrace]) -> list[float]:
    """Time to first token of each request that got one."""
    return [t.chunks[0] - t.sent for t in traces if t.chunks]


def steady_step(traces: list[RequestTrace]) -> tuple[float | None, int]:
    """Median token gap inside the window where every request is decoding."""
    live = [t for t in traces if len(t.chunks) >= 3 and not t.error]
    if len(live) < len(traces) or not live:
        return None, 0
    start = max(t.chunks[0] for t in live)
    end = min(t.chunks[-1] for t in live)
    gaps = []
    for t in live:
        times = [x for x in t.chunks if start <= x <= end]
        gaps.extend(b - a for a, b in itertools.pairwise(times) if b > a)
    if len(gaps) < 5:
        return None, len(live)
    return statistics.median(gaps), len(live)


async def flush(session: aiohttp.ClientSession, url: str) -> None:
    async with session.post(f"{url}/flush_cache") as resp:
        await resp.read()


async def run_batch(
    url: str, name: str, kind: str, prompts: list[int], max_new: int, seed: int, stagger_s: float = 0.0
) -> ScenarioResult:
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await flush(session, url)
        traces = [RequestTrace(p, max_new) for p in prompts]
        if kind == "prefill":  # lone prompts: one after the other, each on an idle server
            for p, tr in zip(prompts, traces, strict=True):
                await stream_one(session, url, random_ids(rng, p), max_new, tr)
        else:
            tasks = []
            for p, tr in zip(prompts, traces, strict=True):
                tasks.append(asyncio.create_task(stream_one(session, url, random_ids(rng, p), max_new, tr)))
                if stagger_s:
                    await asyncio.sleep(stagger_s)
            await asyncio.gather(*tasks)
    result = ScenarioResult(name, kind, prompts, max_new, traces)
    result.steady_step_s, result.steady_requests = steady_step(traces)
    result.ttft_s = ttfts(traces)
    return result


async def run_interference(url: str, seed: int, decoders: int, ctx: int, long_prompt: int) -> ScenarioResult:
    """Decoders running when one long prefill arrives: the ITL spike it causes."""
    rng = random.Random(seed)
    timeout = aiohttp.ClientTimeout(total=900)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await flush(session, url)
        traces = [RequestTrace(ctx, 600) for _ in range(decoders)]
        tasks = [asyncio.create_task(stream_one(session, url, random_ids(rng, ctx), 600, t)) for t in traces]
        while not all(len(t.chunks) >= 20 or t.error for t in traces):
            await asyncio.sleep(0.05)
        long = RequestTrace(long_prompt, 2)
        tasks.append(asyncio.create_task(stream_one(session, url, random_ids(rng, long_prompt), 2, long)))
        await asyncio.gather(*tasks)
        traces.append(long)
    result = ScenarioResult(f"interference_{decoders}x{ctx}+{long_prompt}", "interference", [], 600, traces)
    result.ttft_s = ttfts([long])
    return result


PREFILL_REPEATS = 5
LONE_SIZES = (16, 64, 256, 512, 2048)


async def run_lone_rounds(url: str, sizes: tuple[int, ...], rounds: int, seed: int) -> list[ScenarioResult]:
    """Lone prompts, each on an idle server, every round in a fresh shuffled order.

    The plan sends each size back to back; this tells a size's own TTFT apart
    from the place it holds in the run. One result per size, named as the
    plan's lone prompts (`prefill_P`), so fit and replay read it unchanged;
    `order` holds each round's order.
    """
    rng = random.Random(seed)
    traces: dict[int, list[RequestTrace]] = {p: [] for p in sizes}
    order: list[list[int]] = []
    timeout = aiohttp.ClientTimeout(total=300)
    async with aiohttp.ClientSession(timeout=timeout) as session:
        await flush(session, url)
        for _ in range(rounds):
            sizes_now = rng.sample(sizes, len(sizes))
            order.append(sizes_now)
            for p in sizes_now:
                trace = RequestTrace(p, 1)
                await stream_one(session, url, random_ids(rng, p), 1, trace)
                traces[p].append(trace)
    results = []
    for p in sizes:
        r = ScenarioResult(f"prefill_{p}", "prefill", [p] * rounds, 1, traces[p])
        r.ttft_s = ttfts(traces[p])
        r.order = order
        results.append(r)
    return results


def plan(max_kv_tokens: int, context_length: int = 131072) -> list[tuple[str, str, list[int], int]]:
    """(name, kind, prompts, max_new_tokens) of every batch scenario, sized to the KV capacity.

    Every mixed batch has a homogeneous twin holding the same total KV. Big
    batches decode for long enough that all their requests overlap after the
    last prefill (SGLang interleaves decode steps with prefill chunks).
    """
    longest = context_length - 512
    out: list[tuple[str, str, list[int], int]] = []
    # Short prompts pin the per-request host latency apart from the linear floor; the 4K-64K
    # prompts (most of a Mooncake trace) keep a held-out share from leaving that range unfitted.
    # A short prompt's TTFT swings by a few ms from one request to the next on real SGLang (its
    # host path): those up to 2K tokens are sent PREFILL_REPEATS times, one after the other.
    for p in (16, 64, 256, 512, 2048, 4096, 8192, 16384, 32768, 65536, 98304):
        out.append((f"prefill_{p}", "prefill", [min(p, longest)] * (PREFILL_REPEATS if p <= 2048 else 1), 1))
    for n in (1, 8, 32):
        out.append((f"decode_{n}x1024", "decode", [1024] * n, 64))
    for n in (128, 256):
        out.append((f"decode_{n}x1024", "decode", [1024] * n, 400))
    budget = min(262_144, int(max_kv_tokens * 0.8))
    mixes = [
        ("mixed_1long_63short", [min(longest, budget // 2)]),
        ("mixed_1x120k_63x512", [min(longest, 120_000)]),
        ("mixed_4x16k_60x1k", [16_384] * 4),
    ]
    for name, long in mixes:
        short = 512 if "63x512" in name else 1024 if "60x1k" in name else (budget - long[0]) // 63
        prompts = long + [short] * (64 - len(long))
        out.append((name, "decode", prompts, 400))
        twin = sum(prompts) // 64
        out.append((f"twin_64x{twin}", "decode", [twin] * 64, 400))
    out.append(("decode_16x16384", "decode", [min(longest, budget // 16)] * 16, 200))
    return out


def long_plan(max_kv_tokens: int, context_length: int = 131072) -> list[tuple[str, str, list[int], int]]:
    """(name, kind, prompts, max_new_tokens) of the batches the length split is about.

    Long requests (16K-120K) decoding alone, a few together, and beside 8-56 short ones: how a
    batch's length mix prices its steps depends on how many requests share them (split-KV
    attention spreads a long request over idle SMs only while the batch leaves some idle), and the
    main plan measures mixed batches of 64 requests only. Every prompt is sent at once, so all
    decode together after the last prefill; 256 new tokens keep the shorts decoding past it.
    """
    longest = context_length - 512
    budget = int(max_kv_tokens * 0.8)
    batches: list[tuple[str, list[int]]] = [
        ("long_1x16k", [16_384]),
        ("long_1x32k", [32_768]),
        ("long_1x60k", [60_000]),
        ("long_1x120k", [120_000]),
        ("long_2x60k", [60_000] * 2),
        ("long_4x30k", [30_000] * 4),
        ("long_4x60k", [60_000] * 4),
        ("long_8x16k", [16_384] * 8),
        ("long_8x30k", [30_000] * 8),
        ("mix_1x60k_8x1k", [60_000] + [1024] * 8),
        ("mix_1x60k_16x1k", [60_000] + [1024] * 16),
        ("mix_1x60k_32x1k", [60_000] + [1024] * 32),
        ("mix_1x60k_63x1k", [60_000] + [1024] * 63),
        ("mix_2x60k_16x1k", [60_000] * 2 + [1024] * 16),
        ("mix_4x30k_28x1k", [30_000] * 4 + [1024] * 28),
        ("mix_8x16k_56x1k", [16_384] * 8 + [1024] * 56),
        ("short_8x1k", [1024] * 8),
        ("short_16x1k", [1024] * 16),
        ("short_24x1k", [1024] * 24),
    ]
    out = []
    for name, prompts in batches:
        prompts = [min(p, longest) for p in prompts]
        if sum(prompts) + 256 * len(prompts) <= budget:
            out.append((name, "decode", prompts, 256))
    return out
