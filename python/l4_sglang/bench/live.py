"""Live mode: replay a trace against a running router over HTTP, with real streaming clients.

Each trace request becomes one `POST /generate` (SGLang's native API, which
our router and smg both serve) with `"stream": true`, `input_ids` of the
trace's prompt length, `max_new_tokens` = the trace's output length and
`ignore_eos` (what `sglang.bench_serving` sends). Prompt ids are made from
the trace's hash ids, 512 tokens per id, so equal ids give equal blocks and
a prefix cache keyed by tokens (the emulated worker's, SGLang's radix cache)
hits where the simulator's hash-id cache does; the hash ids also go along as
`hash_ids` (our router hands them to its policy and its workers, as the
simulator does). Requests without hash ids get unique made-up ones.

Time scale: an emulated worker started with `--time-scale S` sleeps S real
seconds per modelled second (S = 0.25: four times faster than the GPU it
models). The client therefore sends request i at `S * (arrival_i -
arrival_0)` real seconds after the start, and every measured time is divided
by S: the records are in model seconds, comparable with the simulator's.

Measured per request from the stream: the send time (arrival), the time of
each chunk that brings new tokens (`meta_info.completion_tokens`, cumulative
in SGLang's stream), the last chunk (finish). A chunk that brings several
tokens gives them all its time, so ITL is per token with zeros inside a
chunk (bench_serving's ITL is per chunk).

Migrations: read from our router's `/metrics` (`l4_router_migrations_total`,
summed over reasons, after minus before); None where there is no such
family (smg). Layouts: where the router serves `/l4/stages` (ours), it is
polled every model second and kept on change, in model time.
"""

from __future__ import annotations

import asyncio
import json
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import aiohttp

from l4_sglang.sim.cluster import unique_hash_ids
from l4_sglang.sim.metrics import LayoutSample, RequestRecord, SimResult
from l4_sglang.text.builtin import VOCAB_SIZE
from l4_sglang.worker.prefix_cache import BLOCK_SIZE

_TOKENS = re.compile(rb'"completion_tokens":\s*(\d+)')
_ABORT = re.compile(rb'"finish_reason":\s*\{[^}]*"type":\s*"abort"')
_MIGRATIONS = re.compile(r"^l4_router_migrations_total(?:\{[^}]*\})?\s+([0-9.eE+-]+)\s*$", re.M)
PREPARE_AHEAD_S = 0.5
"""Real seconds before its send time a request's body is built."""
_FIRST_ID = 1000
"""Prompt ids start here (clear of any special tokens)."""

ProgressFn = Callable[[int, int, int, float], None]
"""(requests done, requests in all, requests in flight, real seconds since the start)."""


@lru_cache(maxsize=65536)
def _block(hash_id: int) -> tuple[int, ...]:
    span = VOCAB_SIZE - _FIRST_ID - BLOCK_SIZE
    base = _FIRST_ID + (hash_id * 2654435761) % span
    return tuple(range(base, base + BLOCK_SIZE))


def prompt_ids(prompt_tokens: int, hash_ids: Sequence[int]) -> list[int]:
    """`prompt_tokens` ids, block i made from hash_ids[i] (equal ids, equal blocks).

    `hash_ids` must cover the prompt (one id per started block of BLOCK_SIZE)."""
    blocks = -(-prompt_tokens // BLOCK_SIZE)
    if len(hash_ids) < blocks:
        raise ValueError(
            f"invalid hash_ids: {len(hash_ids)} ids for {prompt_tokens} tokens ({blocks} blocks)"
        )
    out: list[int] = []
    for i in range(blocks):
        out.extend(_block(int(hash_ids[i])))
    del out[prompt_tokens:]
    return out


@dataclass
class LiveSettings:
    url: str
    time_scale: float = 1.0
    """The workers' --time-scale: real seconds per model second."""
    request_timeout_s: float = 3600.0
    """Real seconds one request may take before it counts as failed."""
    send_hash_ids: bool = True
    layout_poll_model_s: float = 1.0


@dataclass
class LiveResult:
    result: SimResult
    """Records in model seconds; `migrations` is 0 where `migrations` below is None."""
    migrations: int | None
    label: str
    instances: int | None
    emulated: bool | None
    """Every worker says it is emulated (None: unknown)."""
    max_send_lag_s: float
    """The latest any request left the client after its due time, in model seconds."""
    wall_s: float
    worker_lost_share: float | None = None
    """Emulated workers' step time lost to a host that could not keep up, over their modelled step
    time, during the run (0: they kept time; None: not emulated workers or not readable)."""


async def _get(session: aiohttp.ClientSession, url: str) -> tuple[int, str]:
    try:
        async with session.get(url, timeout=aiohttp.ClientTimeout(total=10)) as resp:
            return resp.status, await resp.text()
    except (TimeoutError, aiohttp.ClientError):
        return 0, ""


def _migrations(status: int, text: str) -> int | None:
    if status != 200:
        return None
    found = _MIGRATIONS.findall(text)
    if not found and "l4_router_migrations_total" not in text:
        return None
    return int(sum(float(x) for x in found))


@dataclass(frozen=True)
class Probe:
    policy: str | None
    """Our router's policy name (None: not our router)."""
    workers: int | None
    staged: bool
    """Serves /l4/stages."""
    emulated: bool | None
    """Every worker's /server_info says emulated (None: no worker answered)."""
    worker_urls: tuple[str, ...] = ()


async def probe(session: aiohttp.ClientSession, url: str) -> Probe:
    """What the router at `url` is: our router (and its policy) or another, and its workers."""
    status, text = await _get(session, url + "/l4/stages")
    policy = None
    staged = False
    if status == 200:
        try:
            policy = json.loads(text).get("policy")
            staged = True
        except (ValueError, AttributeError):
            pass
    status, text = await _get(session, url + "/workers")
    listed: list = []
    if status == 200:
        try:
            body = json.loads(text)
            found = body.get("workers") if isinstance(body, dict) else body
            listed = found if isinstance(found, list) else []
        except ValueError:
            pass
    emulated: bool | None = None
    for w in listed:
        wurl = w.get("url") if isinstance(w, dict) else None
        if not isinstance(wurl, str):
            continue
        status, text = await _get(session, wurl.rstrip("/") + "/server_info")
        try:
            flag = json.loads(text).get("emulated") if status == 200 else None
        except (ValueError, AttributeError):
            flag = None
        emulated = bool(flag) if emulated is None else emulated and bool(flag)
    urls = tuple(
        w["url"].rstrip("/") for w in listed if isinstance(w, dict) and isinstance(w.get("url"), str)
    )
    return Probe(policy, len(listed) or None, staged, emulated, urls)


async def emulation_clock(session: aiohttp.ClientSession, urls: Sequence[str]) -> tuple[float, float] | None:
    """(modelled, lost) real seconds summed over emulated workers' engines (/emulated/steps), or None.

    An emulated worker that keeps up spends its modelled step time and loses none; `lost` is the
    time its steps ran late because the host could not keep up."""
    modelled = lost = 0.0
    seen = False
    for url in urls:
        status, text = await _get(session, url + "/emulated/steps")
        try:
            info = json.loads(text) if status == 200 else {}
        except ValueError:
            info = {}
        if isinstance(info, dict) and "modelled_s" in info and "lost_s" in info:
            modelled += float(info["modelled_s"])
            lost += float(info["lost_s"])
            seen = True
    return (modelled, lost) if seen else None


class _Replay:
    def __init__(self, requests: Sequence[Any], settings: LiveSettings, progress: ProgressFn | None) -> None:
        if not settings.time_scale > 0:
            raise ValueError(f"invalid time_scale: must be > 0, got {settings.time_scale}")
        self.s = settings
        self.progress = progress
        reqs = sorted(requests, key=lambda r: float(r.arrival_s))
        self.records: list[RequestRecord] = []
        for i, r in enumerate(reqs):
            prompt, out = int(r.prompt_tokens), max(int(r.output_tokens), 1)
            if prompt < 1:
                raise ValueError(f"invalid request {i}: prompt_tokens must be >= 1, got {prompt}")
            hashes = list(getattr(r, "hash_ids", None) or [])
            if len(hashes) * BLOCK_SIZE < prompt:
                hashes = unique_hash_ids(i, prompt)
            self.records.append(RequestRecord(f"r{i}", i, float(r.arrival_s), prompt, out, hashes))
        self.start_model = self.records[0].arrival_s if self.records else 0.0
        self.t0 = 0.0
        self.done = 0
        self.in_flight = 0
        self.max_lag = 0.0
        self.layouts: list[LayoutSample] = []

    def model(self, t_real: float) -> float:
        return self.start_model + (t_real - self.t0) / self.s.time_scale

    async def one(self, session: aiohttp.ClientSession, rec: RequestRecord) -> None:
        due = self.t0 + (rec.arrival_s - self.start_model) * self.s.time_scale
        delay = due - time.perf_counter() - PREPARE_AHEAD_S
        if delay > 0:  # the body is built shortly before it is due, not all at the start
            await asyncio.sleep(delay)
        body: dict[str, Any] = {
            "input_ids": prompt_ids(rec.prompt_tokens, rec.hash_ids),
            "sampling_params": {"max_new_tokens": rec.output_tokens, "ignore_eos": True, "temperature": 0.0},
            "stream": True,
        }
        if self.s.send_hash_ids:
            body["hash_ids"] = rec.hash_ids
        payload = json.dumps(body, separators=(",", ":"))
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        sent = time.perf_counter()
        self.max_lag = max(self.max_lag, (sent - due) / self.s.time_scale)
        rec.arrival_s = self.model(sent)
        self.in_flight += 1
        try:
            await self._stream(session, rec, payload)
        except (TimeoutError, aiohttp.ClientError, ValueError) as e:
            rec.failed = f"{type(e).__name__}: {e}"
        finally:
            self.in_flight -= 1
            if rec.finished_s is None and rec.failed is None:
                rec.failed = "stream ended before the last token"
            self.done += 1
            if self.progress is not None:
                self.progress(self.done, len(self.records), self.in_flight, time.perf_counter() - self.t0)

    async def _stream(self, session: aiohttp.ClientSession, rec: RequestRecord, payload: str) -> None:
        timeout = aiohttp.ClientTimeout(total=self.s.request_timeout_s)
        headers = {"Content-Type": "application/json"}
        url = self.s.url + "/generate"
        async with session.post(url, data=payload, headers=headers, timeout=timeout) as resp:
            if resp.status != 200:
                rec.failed = f"HTTP {resp.status}: {(await resp.text())[:200]}"
                return
            async for line in resp.content:
                if not line.startswith(b"data:"):
                    continue
                now = time.perf_counter()
                data = line[5:].strip()
                if data == b"[DONE]":
                    break
                if _ABORT.search(data):
                    rec.failed = "aborted: " + data[:200].decode(errors="replace")
                    return
                m = _TOKENS.search(data)
                n = int(m.group(1)) if m else len(json.loads(data).get("output_ids") or [])
                t = self.model(now)
                while rec.generated < n:
                    rec.token_times.append(t)
                    rec.generated += 1
                if rec.generated >= rec.output_tokens:
                    rec.finished_s = t
        if rec.finished_s is None and rec.failed is None and rec.generated > 0:
            rec.failed = f"stream ended after {rec.generated} of {rec.output_tokens} tokens"

    async def poll_layouts(self, session: aiohttp.ClientSession, stop: asyncio.Event) -> None:
        every = max(self.s.layout_poll_model_s * self.s.time_scale, 0.05)
        while not stop.is_set():
            status, text = await _get(session, self.s.url + "/l4/stages")
            now = self.model(time.perf_counter())
            if status == 200:
                try:
                    stages = json.loads(text).get("stages") or []
                except (ValueError, AttributeError):
                    stages = []
                if stages:
                    bounds = tuple(float(s["hi_tokens"]) for s in stages if s.get("hi_tokens") is not None)
                    workers = tuple(tuple(s.get("workers") or ()) for s in stages)
                    last = self.layouts[-1] if self.layouts else None
                    if last is None or (last.bounds, last.workers) != (bounds, workers):
                        self.layouts.append(LayoutSample(now, bounds, workers))
            with _suppress_timeout():
                await asyncio.wait_for(stop.wait(), every)


class _suppress_timeout:
    def __enter__(self) -> None:
        return None

    def __exit__(self, kind, value, tb) -> bool:
        return kind is TimeoutError


async def replay_async(
    requests: Sequence[Any],
    settings: LiveSettings,
    label: str | None = None,
    progress: Callable[[str], ProgressFn] | None = None,
) -> LiveResult:
    """Send every request at its (scaled) arrival time, wait for all, return the measurements.

    `label` names the results (default: our router's policy, else "external"); `progress`
    makes a progress callback from that name."""
    run = _Replay(requests, settings, None)
    connector = aiohttp.TCPConnector(limit=0, force_close=False)
    async with aiohttp.ClientSession(connector=connector, read_bufsize=1 << 22) as session:
        found = await probe(session, settings.url)
        name = label or found.policy or "external"
        run.progress = progress(name) if progress is not None else None
        before = _migrations(*(await _get(session, settings.url + "/metrics")))
        clock0 = await emulation_clock(session, found.worker_urls)
        stop = asyncio.Event()
        run.t0 = time.perf_counter()
        poller = asyncio.create_task(run.poll_layouts(session, stop)) if found.staged else None
        await asyncio.gather(*(run.one(session, rec) for rec in run.records))
        wall = time.perf_counter() - run.t0
        stop.set()
        if poller is not None:
            await poller
        after = _migrations(*(await _get(session, settings.url + "/metrics")))
        clock1 = await emulation_clock(session, found.worker_urls)
    lost_share = None
    if clock0 is not None and clock1 is not None and clock1[0] > clock0[0]:
        lost_share = (clock1[1] - clock0[1]) / (clock1[0] - clock0[0])
    migrations = after - before if after is not None and before is not None else None
    res = SimResult(
        policy=name,
        instances=found.workers or 0,
        cost_model="(live)",
        seed=0,
        records=run.records,
        migrations=migrations or 0,
        failed_migrations=0,
        events=0,
        steps=0,
        wall_s=wall,
        layouts=run.layouts,
    )
    return LiveResult(res, migrations, name, found.workers, found.emulated, run.max_lag, wall, lost_share)


def replay(
    requests: Sequence[Any],
    settings: LiveSettings,
    label: str | None = None,
    progress: Callable[[str], ProgressFn] | None = None,
) -> LiveResult:
    return asyncio.run(replay_async(requests, settings, label, progress))


def progress_bar(label: str) -> ProgressFn:
    """Progress on stderr (`bench.progress`): a bar on a terminal, else one line at the end."""
    from l4_sglang.bench.progress import Progress

    bar = Progress(label, word="done")

    def show(done: int, total: int, in_flight: int, elapsed: float) -> None:
        bar.update(done, total, in_flight=in_flight)

    return show


__all__ = [
    "LiveResult",
    "LiveSettings",
    "Probe",
    "probe",
    "progress_bar",
    "prompt_ids",
    "replay",
    "replay_async",
]
