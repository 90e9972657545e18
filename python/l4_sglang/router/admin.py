"""SGLang's router-level endpoints, answered as smg (SGLang's model gateway) answers them.

- GET /get_model_info, /model_info and /get_server_info, /server_info: a healthy worker's own
  answer, byte for byte (SGLang's frontend, `sgl.RuntimeEndpoint`, reads `model_path` from
  /get_model_info; `bench_serving` reads /server_info). The worker that answered is named in the
  `x-l4-worker` header; a worker that fails is skipped for the next healthy one.
- GET|POST /flush_cache: every registered worker is flushed (the query string, e.g. `timeout`,
  goes with it) and each is reported: 200 `"status": "success"` when all flushed, 206
  `"partial_success"` when some did (smg's codes and keys), 502 `"failed"` when none did,
  503 with no worker registered. A worker that refuses (SGLang answers 400 while it has
  requests running or waiting) counts as failed, with its answer in the error.
- GET /health_generate: the first healthy worker whose /health_generate (a one-token generation,
  skipped by SGLang while it has requests in progress) answers 200 gives 200; 503 when none does or
  the router is draining. Open without the api key, as SGLang keeps /health* open.
- GET /v1/models/{model}: the model card when the router serves that name, else OpenAI's 404.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING, Any

import aiohttp
from aiohttp import web

from l4_sglang.router import native, openai

if TYPE_CHECKING:
    from l4_sglang.router.app import Router

INFO_TIMEOUT_S = 30.0
HEALTH_GENERATE_TIMEOUT_S = 30.0
"""SGLang's own /health_generate waits up to 20 s for its one-token generation."""
FLUSH_TIMEOUT_S = 30.0
"""Per worker, on top of the `timeout` the client passes to SGLang's /flush_cache."""
OPEN_PATHS = frozenset({"/health_generate"})
"""Admin paths that need no api key (SGLang serves every /health* path without one)."""

_CONNECT_ERRORS = (aiohttp.ClientError, OSError, TimeoutError)


class Admin:
    """The handlers; `add_routes` wires them into the router's app."""

    def __init__(self, router: Router) -> None:
        self.router = router
        key = router.settings.worker_api_key
        self._headers = {"Authorization": f"Bearer {key}"} if key else {}
        self._next = 0

    def add_routes(self, r: web.UrlDispatcher) -> None:
        for path in ("/get_model_info", "/model_info", "/get_server_info", "/server_info"):
            r.add_get(path, self.worker_info)
        r.add_route("GET", "/flush_cache", self.flush_cache)
        r.add_route("POST", "/flush_cache", self.flush_cache)
        r.add_get("/health_generate", self.health_generate)
        r.add_get("/v1/models/{model:.+}", self.model_card)

    # ---- talking to workers -------------------------------------------------

    def _rotation(self) -> list[str]:
        """Healthy workers, starting one further on each call (so one worker is not always asked)."""
        healthy = self.router.pool.healthy()
        if not healthy:
            return []
        start = self._next % len(healthy)
        self._next += 1
        return healthy[start:] + healthy[:start]

    async def _call(self, method: str, url: str, timeout: float) -> tuple[int, bytes, str]:
        """(status, body, content type) of one request to a worker; raises on a broken connection."""
        session = self.router.session()
        limit = aiohttp.ClientTimeout(total=timeout)
        async with session.request(method, url, headers=self._headers, timeout=limit) as resp:
            return resp.status, await resp.read(), resp.headers.get("Content-Type", "")

    @staticmethod
    def _why(status: int, body: bytes) -> str:
        text = body.decode("utf-8", "replace").strip()
        return f"HTTP {status}" + (f": {text[:300]}" if text else "")

    @staticmethod
    def _error(status: int, message: str, extra: dict[str, Any] | None = None) -> web.Response:
        body = native.error_body(message)
        if extra:
            body.update(extra)
        return web.json_response(body, status=status)

    # ---- handlers ---------------------------------------------------------------

    async def worker_info(self, request: web.Request) -> web.Response:
        """A healthy worker's /get_model_info, /model_info, /get_server_info or /server_info."""
        tried: list[dict[str, str]] = []
        for url in self._rotation():
            try:
                status, body, ctype = await self._call("GET", url + request.path, INFO_TIMEOUT_S)
            except _CONNECT_ERRORS as e:
                tried.append({"worker": url, "error": f"{type(e).__name__}: {e}"})
                continue
            if status == 200:
                headers = {"Content-Type": ctype or "application/json", "x-l4-worker": url}
                return web.Response(body=body, status=200, headers=headers)
            tried.append({"worker": url, "error": self._why(status, body)})
        if not tried:
            return self._error(503, f"No healthy worker to answer {request.path}.")
        return self._error(502, f"No worker answered {request.path}.", {"failed": tried})

    async def flush_cache(self, request: web.Request) -> web.Response:
        urls = list(self.router.pool.workers)
        if not urls:
            return self._error(503, "No worker is registered: there is no cache to flush.")
        timeout = FLUSH_TIMEOUT_S
        try:
            timeout += max(float(request.query.get("timeout", 0.0)), 0.0)
        except ValueError:
            return self._error(400, f"timeout must be a number, got {request.query['timeout']!r}.")
        qs = f"?{request.query_string}" if request.query_string else ""

        async def flush(url: str) -> str | None:
            try:
                status, body, _ = await self._call("POST", f"{url}/flush_cache{qs}", timeout)
            except _CONNECT_ERRORS as e:
                return f"flush_cache failed for worker {url}: {type(e).__name__}: {e}"
            if status == 200:
                return None
            return f"flush_cache failed for worker {url}: {self._why(status, body)}"

        errors = await asyncio.gather(*(flush(u) for u in urls))
        ok = [u for u, e in zip(urls, errors, strict=True) if e is None]
        failed = [{"worker": u, "error": e} for u, e in zip(urls, errors, strict=True) if e is not None]
        n = len(urls)
        if not failed:
            status, code, message = "success", 200, f"Successfully flushed cache on all {n} workers"
        else:
            status, code = ("partial_success", 206) if ok else ("failed", 502)
            message = f"Cache flush: {len(ok)} succeeded, {len(failed)} failed"
        body = {
            "status": status,
            "message": message,
            "workers_flushed": len(ok),
            "total_http_workers": n,
            "total_grpc_workers": 0,
            "total_zmq_workers_skipped": 0,
            "total_workers": n,
            "successful": ok,
            "failed": failed,
        }
        return web.json_response(body, status=code)

    async def health_generate(self, request: web.Request) -> web.Response:
        if self.router.draining:
            return self._error(503, "The router is shutting down.")
        tried: list[dict[str, str]] = []
        for url in self._rotation():
            try:
                status, body, _ = await self._call("GET", url + "/health_generate", HEALTH_GENERATE_TIMEOUT_S)
            except _CONNECT_ERRORS as e:
                tried.append({"worker": url, "error": f"{type(e).__name__}: {e}"})
                continue
            if status == 200:
                return web.Response(status=200, headers={"x-l4-worker": url})
            tried.append({"worker": url, "error": self._why(status, body)})
        if not tried:
            return self._error(503, "No healthy worker.")
        return self._error(503, "No worker could generate.", {"failed": tried})

    async def model_card(self, request: web.Request) -> web.Response:
        router = self.router
        wanted = request.match_info["model"]
        listed = router.settings.model_name or router.pool.model_name() or "default"
        names = router._served_models() or {listed}
        if wanted not in names:
            message = f"The model {wanted!r} does not exist; this router serves {sorted(names)}."
            return web.json_response(openai.error_body(message, "model", 404, "NotFoundError"), status=404)
        cards = openai.models_list(wanted, router.pool.context_length(), int(time.time()))
        return web.json_response(cards["data"][0])
