"""Blocking HTTP helpers (stdlib only), emulated worker fleets and scripted policies for router tests."""

from __future__ import annotations

import contextlib
import functools
import os
import re
import subprocess
import sys
from collections.abc import Iterator

import http_helpers
from http_helpers import free_port

from l4_sglang.core import CostModel
from l4_sglang.policy.base import Migration, Policy, RequestInfo
from l4_sglang.worker.server import BackgroundWorker, WorkerSettings

# Router tests wait longer per request (a request may cross several workers) and poll less often.
call = functools.partial(http_helpers.call, timeout=60.0)
get_json = functools.partial(http_helpers.get_json, timeout=60.0)
post_json = functools.partial(http_helpers.post_json, timeout=60.0)
poll = functools.partial(http_helpers.poll, interval=0.02)


def sse(url: str, body, timeout: float = 60.0) -> list[str]:
    """Payloads of each `data:` event of a streaming POST, [DONE] included."""
    return [payload for _, payload in http_helpers.timed_sse(url, body, timeout)]


MODEL = "meta-llama/Meta-Llama-3-8B"
FAST = 0.05
"""Time scale of the test workers: 20x faster than the cost model says."""


def metric(text: str, name: str, **labels: str) -> float:
    """Sum of the samples of `name` whose labels include `labels` (0 if none)."""
    total = 0.0
    for line in text.splitlines():
        m = re.match(r"^([a-zA-Z_:][\w:]*)(\{([^}]*)\})?\s+(\S+)$", line)
        if m is None or m.group(1) != name:
            continue
        have = dict(re.findall(r'(\w+)="([^"]*)"', m.group(3) or ""))
        if all(have.get(k) == v for k, v in labels.items()):
            total += float(m.group(4))
    return total


def worker_prompt_counts(url: str, split: float) -> tuple[int, int]:
    """(requests with prompts <= split, with longer prompts) a worker has prefilled, from its /metrics."""
    _, _, text = call("GET", url + "/metrics")
    total = metric(text, "sglang:prompt_tokens_histogram_count")
    short = metric(text, "sglang:prompt_tokens_histogram_bucket", le=repr(float(split)))
    return int(short), int(total - short)


@contextlib.contextmanager
def workers(n: int, time_scale: float = FAST, **kw) -> Iterator[list[BackgroundWorker]]:
    started: list[BackgroundWorker] = []
    try:
        for _ in range(n):
            started.append(BackgroundWorker(WorkerSettings(port=0, time_scale=time_scale, **kw)).start())
        yield started
    finally:
        for w in started:
            with contextlib.suppress(Exception):
                w.stop()


class Scripted(Policy):
    """Routes every request to the first healthy worker (or `home`); proposes moving it to the
    next healthy worker every `every` generated tokens, at most `moves` times per request."""

    NAME = "scripted"

    def __init__(self, every: int = 0, moves: int = 0, home: str | None = None) -> None:
        super().__init__(None, CostModel.load("llama3-8b-h100-default"))
        self.every, self.moves, self.home = every, moves, home
        self.done: dict[str, int] = {}
        self.confirmed: list[Migration] = []
        self.finished: list[str] = []
        self.aborted: list[str] = []
        self.routed: list[str] = []
        self.rerouted: list[str] = []
        """Rids routed as arrivals, and again after a failover."""

    def route(self, req: RequestInfo, now: float) -> str:
        self.routed.append(req.rid)
        return self._place(req, now)

    def reroute(self, req: RequestInfo, now: float) -> str:
        self.rerouted.append(req.rid)
        return self._place(req, now)

    def _place(self, req: RequestInfo, now: float) -> str:
        workers = self.healthy_workers()
        worker = self.home if self.home in workers else workers[0]
        self.book.route(req, worker, now)
        return worker

    def on_progress(self, rid: str, generated_tokens: int, now: float) -> list[Migration]:
        super().on_progress(rid, generated_tokens, now)
        b = self.book.requests.get(rid)
        n = self.done.get(rid, 0)
        if b is None or b.target is not None or not self.every or n >= self.moves:
            return []
        if generated_tokens < self.every * (n + 1):
            return []
        workers = self.book.healthy_workers()
        others = [w for w in workers if w != b.worker]
        if not others:
            return []
        target = workers[(workers.index(b.worker) + 1) % len(workers)] if b.worker in workers else others[0]
        self.done[rid] = n + 1
        return [self.propose(rid, target, "scripted", now)]

    def on_migrated(self, m: Migration, now: float) -> None:
        super().on_migrated(m, now)
        self.confirmed.append(m)

    def on_finish(self, rid: str, now: float) -> None:
        super().on_finish(rid, now)
        self.finished.append(rid)

    def on_abort(self, rid: str, now: float) -> None:
        super().on_abort(rid, now)
        self.aborted.append(rid)


class Process:
    """A `python -m ...` child in its own process group; output captured to a file."""

    def __init__(self, *args: str, log_path=None) -> None:
        self.log = open(log_path, "w+b") if log_path else subprocess.DEVNULL  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, *args], env=dict(os.environ), stdout=self.log, stderr=subprocess.STDOUT,
            start_new_session=True,
        )  # fmt: skip

    def output(self) -> str:
        if self.log is subprocess.DEVNULL:
            return ""
        self.log.seek(0)
        return self.log.read().decode(errors="replace")

    def stop(self, sig=None) -> int:
        import signal

        if self.proc.poll() is None:
            self.proc.send_signal(sig or signal.SIGTERM)
        try:
            self.proc.wait(20)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.proc.pid, signal.SIGKILL)
            self.proc.wait()
        return self.proc.returncode


class FakeWorker:
    """An aiohttp app on its own loop and thread: `routes` maps (method, path) to (status, body text)."""

    def __init__(self, routes: dict[tuple[str, str], tuple[int, str]]) -> None:
        import asyncio
        import threading

        from aiohttp import web

        self.routes = routes
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def handle(request: web.Request) -> web.Response:
            status, text = self.routes.get((request.method, request.path), (404, '{"detail":"Not Found"}'))
            return web.Response(status=status, text=text, content_type="application/json")

        async def start():
            app = web.Application()
            app.router.add_route("*", "/{tail:.*}", handle)
            self._runner = web.AppRunner(app)
            await self._runner.setup()
            await web.TCPSite(self._runner, "127.0.0.1", self.port).start()
            ready.set()

        def main():
            self._loop.run_until_complete(start())
            self._loop.run_forever()
            self._loop.run_until_complete(self._runner.cleanup())

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)
