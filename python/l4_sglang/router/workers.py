"""The registry of workers: URLs, health and load polling, a circuit breaker.

A worker's id is its normalised URL (`normalize_url`). Every `interval`
seconds each registered worker gets `GET /health` and a load query; the
answers become `WorkerSnapshot`s handed to the policy (through the forwarder's
`PolicyDriver`, `driver.loads`) in one call.

Load sources, tried in order until one answers (the one that did is kept,
and the chain starts over when it stops answering): `GET /v1/loads`
(SGLang 0.5), `GET /get_load` (older SGLang), `GET /metrics` (`sglang:`
gauges, needs `--enable-metrics`). Real SGLang 0.5.14 answers /v1/loads with
a 500 when metrics are on, hence the chain.

Circuit breaker: `failure_threshold` failed health checks in a row, or one
connection error while forwarding (`report_failure`), eject a worker: the
policy is told (`driver.worker_removed`: L4 re-partitions the others) and
`on_eject(url)` lets the forwarder resume the requests that were running
there. `recovery_threshold` passed health checks in a row take it back: the
policy is told (`driver.worker_added`) and gets its snapshot. The policy only ever
knows the healthy workers; workers whose first check fails are registered
ejected. An admin `remove` forgets a worker whatever its state.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import aiohttp

from l4_sglang.policy.base import Policy, WorkerSnapshot
from l4_sglang.policy.driver import PolicyDriver

log = logging.getLogger(__name__)

LOAD_PATHS = ("/v1/loads", "/get_load", "/metrics")
_HOST = re.compile(r"[A-Za-z0-9._\-:]+")  # names, IPv4, IPv6 (brackets stripped by urlsplit)


class BadWorkerUrl(ValueError):
    pass


def normalize_url(url: str) -> str:
    """`host:port` or `http(s)://host:port[/]` as `http(s)://host:port`; ValueError if it is not one."""
    if not isinstance(url, str) or not url.strip():
        raise BadWorkerUrl("a worker URL must be a non-empty string")
    url = url.strip().rstrip("/")
    if "://" not in url:
        url = "http://" + url
    parts = urlsplit(url)
    if parts.scheme not in ("http", "https") or not parts.hostname or not _HOST.fullmatch(parts.hostname):
        raise BadWorkerUrl(f"invalid worker URL {url!r}: expected http://host:port")
    try:
        parts.port  # noqa: B018 - raises on a bad port
    except ValueError:
        raise BadWorkerUrl(f"invalid worker URL {url!r}: bad port") from None
    if parts.query or parts.fragment:
        raise BadWorkerUrl(f"invalid worker URL {url!r}: no query or fragment allowed")
    return url


@dataclass(frozen=True)
class Load:
    running: int
    waiting: int
    kv_tokens: int
    queued_tokens: int
    max_total_tokens: int


def _int(x: Any) -> int:
    if isinstance(x, bool) or not isinstance(x, int | float):
        raise ValueError(f"not a number: {x!r}")
    return int(x)


def parse_v1_loads(body: Any) -> Load:
    """SGLang 0.5's /v1/loads, summed over data-parallel ranks."""
    ranks = body["loads"]
    if not isinstance(ranks, list):
        raise ValueError("loads is not a list")
    total = [0, 0, 0, 0, 0]
    for r in ranks:
        total[0] += _int(r["num_running_reqs"])
        total[1] += _int(r["num_waiting_reqs"])
        total[2] += _int(r["num_used_tokens"])
        total[3] += _int(r.get("num_waiting_uncached_tokens", 0))
        total[4] += _int(r.get("max_total_num_tokens", 0))
    return Load(*total)


def parse_get_load(body: Any) -> Load:
    """Older SGLang's /get_load: a list of {num_reqs, num_waiting_reqs, num_tokens} per rank."""
    ranks = body if isinstance(body, list) else [body]
    running = waiting = tokens = 0
    for r in ranks:
        reqs, wait = _int(r["num_reqs"]), _int(r.get("num_waiting_reqs", 0))
        running += max(reqs - wait, 0)
        waiting += wait
        tokens += _int(r.get("num_tokens", 0))
    return Load(running, waiting, tokens, 0, 0)


_SAMPLE = re.compile(r"^(sglang:[a-z_]+)(\{[^}]*\})?\s+(\S+)")


def parse_metrics(text: str) -> Load:
    """SGLang's Prometheus gauges (only tp_rank 0 where a tp_rank label is present)."""
    wanted = {
        "sglang:num_running_reqs": 0,
        "sglang:num_queue_reqs": 1,
        "sglang:num_used_tokens": 2,
        "sglang:max_total_num_tokens": 4,
    }
    total = [0.0] * 5
    seen = False
    for line in text.splitlines():
        m = _SAMPLE.match(line)
        if m is None or m.group(1) not in wanted:
            continue
        labels = m.group(2) or ""
        if "tp_rank=" in labels and 'tp_rank="0"' not in labels:
            continue
        total[wanted[m.group(1)]] += float(m.group(3))
        seen = True
    if not seen:
        raise ValueError("no sglang: load gauges in /metrics")
    return Load(*(int(x) for x in total))


@dataclass
class WorkerState:
    url: str
    healthy: bool = False
    failures: int = 0
    successes: int = 0
    """Health checks passed in a row while ejected."""
    checked: bool = False
    load: Load | None = None
    load_path: str | None = None
    info: dict = field(default_factory=dict)
    """From /server_info: context_length, max_total_num_tokens, model_path, emulated."""

    def snapshot(self) -> WorkerSnapshot:
        x = self.load or Load(0, 0, 0, 0, 0)
        cap = x.max_total_tokens or int(self.info.get("max_total_num_tokens") or 0)
        return WorkerSnapshot(
            worker_id=self.url,
            running=x.running,
            waiting=x.waiting,
            kv_tokens=x.kv_tokens,
            max_kv=0,
            queued_tokens=x.queued_tokens,
            max_total_tokens=cap,
            healthy=self.healthy,
        )


class WorkerPool:
    """Workers by URL; keeps the policy's view of them current. All calls on the router's loop."""

    def __init__(
        self,
        driver: PolicyDriver | Policy,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
        *,
        interval: float = 0.5,
        failure_threshold: int = 2,
        recovery_threshold: int = 1,
        timeout: float = 5.0,
        headers: dict[str, str] | None = None,
    ) -> None:
        self.driver = PolicyDriver.of(driver)
        self._session = session
        self._clock = clock
        self.interval = interval
        self.failure_threshold = max(1, failure_threshold)
        self.recovery_threshold = max(1, recovery_threshold)
        self.on_eject: Callable[[str], None] | None = None
        """Called with a worker's URL when it is ejected (the forwarder resumes its requests)."""
        self._timeout = aiohttp.ClientTimeout(total=timeout)
        self._headers = headers or {}
        self.workers: dict[str, WorkerState] = {}
        self._task: asyncio.Task | None = None

    # Registry.
    def __contains__(self, url: str) -> bool:
        return url in self.workers

    def healthy(self) -> list[str]:
        return [u for u, w in self.workers.items() if w.healthy]

    async def add(self, url: str) -> WorkerState:
        """Register (and check once) a worker; an already registered URL is returned as it is."""
        url = normalize_url(url)
        if url in self.workers:
            return self.workers[url]
        state = WorkerState(url)
        self.workers[url] = state
        await self._check(state, first=True)
        log.info("worker %s added (%s)", url, "healthy" if state.healthy else "not healthy yet")
        return state

    def remove(self, url: str) -> bool:
        url = normalize_url(url)
        state = self.workers.pop(url, None)
        if state is None:
            return False
        if state.healthy:
            self.driver.worker_removed(url, self._clock())
        log.info("worker %s removed", url)
        return True

    def report_failure(self, url: str, why: str) -> None:
        """A forwarded request could not reach the worker: eject it until health checks pass."""
        state = self.workers.get(url)
        if state is None or not state.healthy:
            return
        state.failures = max(state.failures, self.failure_threshold)
        self._eject(state, why)

    def _eject(self, state: WorkerState, why: str) -> None:
        state.healthy = False
        state.successes = 0
        log.warning("worker %s ejected: %s", state.url, why)
        self.driver.worker_removed(state.url, self._clock())
        if self.on_eject is not None:
            self.on_eject(state.url)

    def _admit(self, state: WorkerState) -> None:
        state.healthy = True
        self.driver.worker_added(state.url, self._clock(), state.snapshot())

    def context_length(self) -> int | None:
        """The smallest context length the healthy workers report, if any does."""
        found = [
            int(w.info["context_length"])
            for w in self.workers.values()
            if w.healthy and isinstance(w.info.get("context_length"), int)
        ]
        return min(found) if found else None

    def model_name(self) -> str | None:
        for w in self.workers.values():
            name = w.info.get("served_model_name") or w.info.get("model_path")
            if isinstance(name, str) and name:
                return name
        return None

    # Polling.
    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._loop(), name="l4-router-poll")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _loop(self) -> None:
        while True:
            await asyncio.sleep(self.interval)
            try:
                await self.poll()
            except Exception:  # never let one bad poll end polling
                log.exception("load poll failed")

    async def poll(self) -> None:
        states = list(self.workers.values())
        if not states:
            return
        await asyncio.gather(*(self._check(s) for s in states))
        live = [s.snapshot() for s in states if s.url in self.workers and s.healthy]
        if live:
            self.driver.loads(live, self._clock())

    async def _get(self, url: str) -> tuple[int, bytes]:
        async with self._session().get(url, timeout=self._timeout, headers=self._headers) as resp:
            return resp.status, await resp.read()

    async def _check(self, state: WorkerState, first: bool = False) -> None:
        """One health check (and load read); ejects or takes back the worker as the counts say.

        `first`: the check of a worker being added, which is taken at once if it passes."""
        try:
            status, _ = await self._get(state.url + "/health")
            ok = status == 200
        except (aiohttp.ClientError, OSError, TimeoutError):
            ok = False
        if self.workers.get(state.url) is not state:
            return  # removed meanwhile
        state.checked = True
        if not ok:
            state.failures += 1
            state.successes = 0
            if state.healthy and state.failures >= self.failure_threshold:
                self._eject(state, f"{state.failures} failed health checks")
            return
        if not state.info:
            await self._read_info(state)
        load = await self._read_load(state)
        if self.workers.get(state.url) is not state:
            return
        if load is not None:
            state.load = load
        state.failures = 0
        if state.healthy:
            return
        state.successes += 1
        if first or state.successes >= self.recovery_threshold:
            if not first:
                log.info("worker %s is healthy again (%d checks passed)", state.url, state.successes)
            self._admit(state)

    async def _read_info(self, state: WorkerState) -> None:
        for path in ("/server_info", "/get_server_info"):
            try:
                status, body = await self._get(state.url + path)
                if status != 200:
                    continue
                info = json.loads(body)
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError):
                continue
            if isinstance(info, dict):
                keep = ("context_length", "max_total_num_tokens", "model_path", "served_model_name")
                state.info = {k: info.get(k) for k in keep if k in info}
                state.info["emulated"] = bool(info.get("emulated", False))
                return

    async def _read_load(self, state: WorkerState) -> Load | None:
        order = list(LOAD_PATHS)
        if state.load_path in order:
            order.remove(state.load_path)
            order.insert(0, state.load_path)
        for path in order:
            try:
                status, body = await self._get(state.url + path)
                if status != 200:
                    continue
                if path == "/metrics":
                    load = parse_metrics(body.decode("utf-8", "replace"))
                elif path == "/v1/loads":
                    load = parse_v1_loads(json.loads(body))
                else:
                    load = parse_get_load(json.loads(body))
            except (aiohttp.ClientError, OSError, TimeoutError, ValueError, KeyError, TypeError):
                continue
            if state.load_path != path:
                log.debug("worker %s: load from %s", state.url, path)
                state.load_path = path
            return load
        return None

    def snapshots(self) -> dict[str, WorkerSnapshot]:
        return {u: w.snapshot() for u, w in self.workers.items()}
