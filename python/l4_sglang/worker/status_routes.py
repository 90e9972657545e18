"""The emulated worker's health, info, load and control routes: /health, /health_generate,
/server_info, /model_info, /v1/loads, /get_load, /metrics, /abort_request, /flush_cache and
the debug log /emulated/steps.

A mixin of `EmulatedWorker` (server.py), which serves the generation routes itself.
"""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from typing import TYPE_CHECKING

from aiohttp import web

from l4_sglang.text import builtin
from l4_sglang.worker import protocol, server_info
from l4_sglang.worker.engine import Request, SamplingParams
from l4_sglang.worker.web_io import MalformedJson, json_response, read_json

if TYPE_CHECKING:
    from l4_sglang.core import CostModel
    from l4_sglang.worker.engine import Engine, EngineConfig
    from l4_sglang.worker.metrics import WorkerMetrics
    from l4_sglang.worker.runner import EngineRunner
    from l4_sglang.worker.server import WorkerSettings

HEALTH_GENERATE_TIMEOUT_S = 20.0
FLUSH_CACHE_MESSAGE = (
    "Cache flushed.\nPlease check backend logs for more details. "
    "(When there are running or waiting requests, the operation will not be performed.)"
)


class StatusRoutes:
    if TYPE_CHECKING:  # what it uses of EmulatedWorker
        settings: WorkerSettings
        cost_model: CostModel
        config: EngineConfig
        identity: server_info.WorkerIdentity
        metrics: WorkerMetrics
        engine: Engine
        runner: EngineRunner | None

        def _submit(
            self, rid: str | None, ids: list[int], params: SamplingParams, hash_ids: list[int] | None
        ) -> tuple[Request, asyncio.Event]: ...
        async def _wait(self, req: Request, event: asyncio.Event) -> None: ...

    async def health(self, request: web.Request) -> web.Response:
        return web.Response(status=200)

    async def health_generate(self, request: web.Request) -> web.Response:
        if not self.engine.idle:
            return web.Response(status=200)  # requests are making progress
        params = SamplingParams(max_new_tokens=1, ignore_eos=True)
        req, event = self._submit(f"HEALTH_CHECK_{uuid.uuid4().hex}", [builtin.BOS_ID], params, None)
        try:
            await asyncio.wait_for(self._wait(req, event), HEALTH_GENERATE_TIMEOUT_S)
        except TimeoutError:
            return web.Response(status=503)
        return web.Response(status=200)

    def _gen_throughput(self) -> float:
        return self.metrics.gen_throughput(self.runner.now()) if self.runner else 0.0

    def _cache_hit_rate(self) -> float:
        stats = self.engine.stats
        return stats.cached_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0

    async def get_server_info(self, request: web.Request) -> web.Response:
        info = server_info.server_info(self.identity, self.config, self._gen_throughput())
        if self.runner is not None:
            info.update(
                request_overhead_s=float(self.cost_model.params.get("request_overhead_s", 0.0)),
                host_latency_s=self.settings.host_latency_s,
                request_delay_s=self.runner.request_delay_s,
            )
        return json_response(info)

    async def get_model_info(self, request: web.Request) -> web.Response:
        return json_response(server_info.model_info(self.identity))

    async def v1_loads(self, request: web.Request) -> web.Response:
        query = request.query
        try:
            include = server_info.parse_include(query.get("include"))
            dp_rank = int(query["dp_rank"]) if "dp_rank" in query else None
        except ValueError as e:
            return json_response({"detail": str(e)}, 400)
        load = self.engine.load()
        if query.get("format") == "prometheus":
            text = server_info.loads_prometheus(load, self._gen_throughput(), self._cache_hit_rate())
            return web.Response(text=text, content_type="text/plain", charset="utf-8")
        return json_response(
            server_info.loads(load, self._gen_throughput(), self._cache_hit_rate(), include, dp_rank)
        )

    async def get_load(self, request: web.Request) -> web.Response:
        return json_response(server_info.get_load(self.engine.load()))

    async def prometheus(self, request: web.Request) -> web.Response:
        now = self.runner.now() if self.runner else 0.0
        text = self.metrics.render(self.engine.load(), self.engine.stats, now)
        resp = web.Response(text=text)
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp

    # ---- control -----------------------------------------------------------

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
        except MalformedJson as e:
            return json_response(protocol.error_body(f"JSON decode error: {e}"), 400)
        if not isinstance(body, dict):
            return json_response(protocol.error_body("The request body must be a JSON object."), 400)
        assert self.runner is not None
        rid = body.get("rid")
        if body.get("abort_all"):
            self.runner.abort_all()
        elif isinstance(rid, str):
            self.runner.abort(rid)
        elif isinstance(rid, list):
            for one in rid:
                if isinstance(one, str):
                    self.runner.abort(one)
        return web.Response(status=200)

    async def flush_cache(self, request: web.Request) -> web.Response:
        if request.method not in ("GET", "POST"):
            return json_response({"detail": "Method Not Allowed"}, 405)
        ok = self.engine.flush_cache()
        return web.Response(text=FLUSH_CACHE_MESSAGE, status=200 if ok else 400)

    async def emulated_steps(self, request: web.Request) -> web.Response:
        """Debug: the engine's recent steps (modelled cost vs when they ran) and lag."""
        assert self.runner is not None
        try:
            last = max(int(request.query.get("last", "200")), 0)
        except ValueError:
            return json_response({"detail": "last must be an integer"}, 400)
        records = list(self.runner.step_log)[-last:] if last else []
        lags = sorted(r.applied - r.deadline for r in self.runner.step_log)
        stats = dataclasses.asdict(self.engine.stats)
        return json_response(
            {
                "emulated": True,
                "cost_model": self.cost_model.name,
                "time_scale": self.settings.time_scale,
                "stats": stats,
                # Busy time as modelled (cost x scale) and lost by falling behind: the time dilation
                # of this worker is (modelled_s + lost_s) / modelled_s, 1.0 when it keeps real time.
                "modelled_s": self.runner.modelled_s,
                "lost_s": self.runner.lost_s,
                "lag_s": {
                    "mean": sum(lags) / len(lags) if lags else 0.0,
                    "p99": lags[int(0.99 * (len(lags) - 1))] if lags else 0.0,
                    "max": lags[-1] if lags else 0.0,
                },
                "steps": [r.to_json() for r in records],
            }
        )
