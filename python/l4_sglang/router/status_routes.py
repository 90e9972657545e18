"""The router's own info and admin routes: GET /health, /v1/models, /metrics, /l4/stages and
GET|POST|DELETE /workers.

A mixin of `Router` (app.py); SGLang's router-level endpoints are in admin.py.
"""

from __future__ import annotations

import contextlib
import math
import time
from typing import TYPE_CHECKING, Any

from aiohttp import web

from l4_sglang.router import native, openai
from l4_sglang.router.web_io import MalformedJson, finite_or_none, json_response, read_json
from l4_sglang.router.workers import BadWorkerUrl, normalize_url

if TYPE_CHECKING:
    from l4_sglang.policy.base import Policy
    from l4_sglang.router.metrics import RouterMetrics
    from l4_sglang.router.settings import RouterSettings
    from l4_sglang.router.workers import WorkerPool


class StatusRoutes:
    if TYPE_CHECKING:  # what it uses of Router
        settings: RouterSettings
        policy: Policy
        metrics: RouterMetrics
        pool: WorkerPool
        draining: bool

        def policy_now(self) -> float: ...

    async def health(self, request: web.Request) -> web.Response:
        if self.draining:
            return json_response({"status": "draining", "healthy_workers": len(self.pool.healthy())}, 503)
        healthy = self.pool.healthy()
        if healthy:
            return json_response({"status": "ok", "healthy_workers": len(healthy)})
        return json_response({"status": "no healthy worker", "healthy_workers": 0}, 503)

    def _served_models(self) -> set[str]:
        """Names a client may ask for: --model-name and the workers' (empty: any name goes)."""
        names = {self.settings.model_name} if self.settings.model_name else set()
        for w in self.pool.workers.values():
            for key in ("served_model_name", "model_path"):
                if isinstance(w.info.get(key), str) and w.info[key]:
                    names.add(w.info[key])
        return names

    async def models(self, request: web.Request) -> web.Response:
        name = self.settings.model_name or self.pool.model_name() or "default"
        return json_response(openai.models_list(name, self.pool.context_length(), int(time.time())))

    async def prometheus(self, request: web.Request) -> web.Response:
        healthy = {u: w.healthy for u, w in self.pool.workers.items()}
        text = self.metrics.render(self.policy.layout(), self.pool.snapshots(), healthy)
        resp = web.Response(text=text)
        resp.headers["Content-Type"] = "text/plain; version=0.0.4; charset=utf-8"
        return resp

    def _stage_of(self) -> dict[str, int]:
        layout = self.policy.layout()
        if layout is None:
            return {}
        return {w: i for i, s in enumerate(layout.stages) for w in s.workers}

    async def list_workers(self, request: web.Request) -> web.Response:
        stage = self._stage_of()
        out = []
        for url, w in self.pool.workers.items():
            s = w.snapshot()
            out.append(
                {
                    "url": url,
                    "healthy": w.healthy,
                    "stage": stage.get(url),
                    "load_source": w.load_path,
                    "load": {
                        "running": s.running,
                        "waiting": s.waiting,
                        "kv_tokens": s.kv_tokens,
                        "queued_tokens": s.queued_tokens,
                        "max_total_tokens": s.max_total_tokens,
                    },
                    "info": w.info,
                }
            )
        return json_response({"policy": self.policy.NAME, "workers": out})

    async def add_worker(self, request: web.Request) -> web.Response:
        try:
            body = await read_json(request)
        except MalformedJson as e:
            return json_response(native.error_body(str(e)), 400)
        url = body.get("url") if isinstance(body, dict) else None
        if url is None:
            url = request.query.get("url")
        try:
            url = normalize_url(url)
        except BadWorkerUrl as e:
            return json_response(native.error_body(str(e)), 400)
        existed = url in self.pool
        state = await self.pool.add(url)
        return json_response({"url": url, "added": not existed, "healthy": state.healthy})

    async def remove_worker(self, request: web.Request) -> web.Response:
        raw = request.query.get("url")
        if raw is None and request.can_read_body:
            with contextlib.suppress(MalformedJson):
                body = await read_json(request)
                raw = body.get("url") if isinstance(body, dict) else None
        try:
            url = normalize_url(raw)
        except BadWorkerUrl as e:
            return json_response(native.error_body(str(e)), 400)
        if not self.pool.remove(url):
            return json_response(native.error_body(f"no worker {url} is registered"), 404)
        return json_response({"url": url, "removed": True})

    async def stages(self, request: web.Request) -> web.Response:
        body: dict[str, Any] = {"policy": self.policy.NAME, "stages": []}
        layout = self.policy.layout()
        if layout is not None:
            body["stages"] = [
                {
                    "index": i,
                    "lo_tokens": s.lo_tokens,
                    "hi_tokens": None if math.isinf(s.hi_tokens) else s.hi_tokens,
                    "workers": list(s.workers),
                }
                for i, s in enumerate(layout.stages)
            ]
            # JSON has no infinity: an overloaded layout predicts no finite E2E.
            body["predicted_mean_e2e_s"] = finite_or_none(layout.predicted_mean_e2e_s)
            body["updated_at"] = layout.updated_at
        body.update(self._l4_status())
        return json_response(body)

    def _l4_status(self) -> dict[str, Any]:
        """What L4 waits for and why it last kept or changed the layout (nothing for other policies).
        Times are the policy's clock (model seconds), as `updated_at`."""
        from l4_sglang.policy.l4 import L4

        policy = self.policy
        if not isinstance(policy, L4):
            return {}
        last = policy.last_refinement
        out: dict[str, Any] = {"waiting_for": policy.waiting_for(), "now": self.policy_now()}
        if last is None:
            out["last_refinement"] = None
            return out
        out["last_refinement"] = {
            "at": last.at,
            "applied": last.applied,
            "reason": last.reason,
            # Predicted QoE costs: the layout in place (None when the workers changed) and the DP's.
            "current_cost": finite_or_none(last.current_cost),
            "proposed_cost": finite_or_none(last.proposed_cost),
            "gain": finite_or_none(last.gain),
        }
        return out
