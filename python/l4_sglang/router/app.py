"""The router's HTTP server (aiohttp): routes, lifecycle, the policy's clock.

The handlers are mixins of `Router`: generation_routes.py (generate, OpenAI,
abort), status_routes.py (health, models, metrics, workers, stages); SGLang's
router-level ones are admin.py's. Settings are settings.py's, body reading and
JSON/SSE writing web_io.py's.

Routes: POST /generate (SGLang; stream or not; a batch without stream),
POST /v1/completions and /v1/chat/completions (OpenAI; stream or not; what
the router cannot follow token by token goes through to the worker's own
route, router/passthrough.py, and never migrates),
GET /v1/models, GET /health (200 while a worker is healthy), GET /metrics,
GET|POST|DELETE /workers, GET /l4/stages, POST /abort_request (by the
client's rid, or abort_all); SGLang's router-level /get_model_info, /get_server_info,
/flush_cache, /health_generate and /v1/models/{id} (router/admin.py).

With an api key, every route but /health, /health_generate and /metrics needs
`Authorization: Bearer <key>`. The policy runs on this loop only: `now` is
`loop.time()`; `tick` runs every `tick_interval` seconds and the pool polls
every `load_poll_interval` seconds. Logs at info level name workers and
request counts, never prompts, outputs or keys.

Hostile or broken clients: a body over `max_body_bytes` gets a 413, one not
received within `body_timeout` seconds a 408, a connection that has not sent
a whole request head within `header_timeout` seconds (or sits idle that long
between requests) is closed; all errors are JSON (OpenAI's shape on /v1).
`drain` (SIGTERM in `launch_router`) stops listening, answers new requests
on open connections with 503 and waits for the requests in flight.
"""

from __future__ import annotations

import asyncio
import contextlib
import hmac
import logging

import aiohttp
from aiohttp import web

from l4_sglang.background import BackgroundLoop
from l4_sglang.core import CostModel
from l4_sglang.policy.base import Policy
from l4_sglang.policy.driver import PolicyDriver
from l4_sglang.policy.registry import make_policy
from l4_sglang.router import admin, native, openai
from l4_sglang.router.forwarding import Forwarder
from l4_sglang.router.generation import Generation
from l4_sglang.router.generation_routes import GenerationRoutes
from l4_sglang.router.metrics import RouterMetrics
from l4_sglang.router.passthrough import PassThrough
from l4_sglang.router.settings import RouterSettings
from l4_sglang.router.status_routes import StatusRoutes
from l4_sglang.router.web_io import BODY_TIMEOUT, MAX_BODY, BodyTimeout, json_response, route_label
from l4_sglang.router.workers import WorkerPool, normalize_url
from l4_sglang.text.tokens import Tokenizer, load_tokenizer

log = logging.getLogger("l4_sglang.router")

OPEN_PATHS = frozenset({"/health", "/metrics"}) | admin.OPEN_PATHS


class Router(GenerationRoutes, StatusRoutes):
    """The router: a policy, a worker pool, a forwarder and the aiohttp app around them."""

    def __init__(
        self, settings: RouterSettings, policy: Policy | None = None, tokenizer: Tokenizer | None = None
    ) -> None:
        self.settings = settings
        if policy is None:
            model = CostModel.load(settings.cost_model)
            policy = make_policy(settings.policy, model, settings.policy_overrides, seed=settings.seed)
        self.policy = policy
        self.driver = PolicyDriver(policy)
        """Every policy call of the pool, the forwarder and the tick loop goes through it."""
        self.tokenizer = tokenizer or load_tokenizer(settings.tokenizer_path)
        self.metrics = RouterMetrics()
        self._session: aiohttp.ClientSession | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        headers = {"Authorization": f"Bearer {settings.worker_api_key}"} if settings.worker_api_key else {}
        self.pool = WorkerPool(
            self.driver,
            self.session,
            self.policy_now,
            interval=settings.load_poll_interval,
            failure_threshold=settings.failure_threshold,
            recovery_threshold=settings.recovery_threshold,
            timeout=settings.health_timeout,
            headers=headers,
        )
        self.forwarder = Forwarder(
            self.driver,
            self.pool,
            self.tokenizer,
            self.metrics,
            self.session,
            self.now,
            headers=headers,
            policy_clock=self.policy_now,
            plain_max_new_tokens=settings.plain_max_new_tokens,
        )
        self.pool.on_eject = self.forwarder.fail_worker
        self.passthrough = PassThrough(self.forwarder, self.pool, self.session, self.now, headers)
        self._by_client_rid: dict[str, Generation] = {}
        self._active = 0
        self._idle: asyncio.Event | None = None
        self.draining = False
        self._tick_task: asyncio.Task | None = None
        self._runner: web.AppRunner | None = None
        self.port: int = settings.port
        self.app = self._build_app()

    # ---- lifecycle ----------------------------------------------------------

    def now(self) -> float:
        assert self._loop is not None, "the router is not started"
        return self._loop.time()

    def policy_now(self) -> float:
        """The policy's clock: model seconds, real seconds over the workers' time scale."""
        return self.now() / self.settings.worker_time_scale

    def session(self) -> aiohttp.ClientSession:
        assert self._session is not None, "the router is not started"
        return self._session

    @property
    def url(self) -> str:
        return f"http://{self.settings.host}:{self.port}"

    async def start(self) -> None:
        """Check every worker once, start polling and ticking, then listen."""
        self._loop = asyncio.get_running_loop()
        self._idle = asyncio.Event()
        self._idle.set()
        connector = aiohttp.TCPConnector(limit=0, ttl_dns_cache=300)
        self._session = aiohttp.ClientSession(connector=connector, auto_decompress=False)
        for url in dict.fromkeys(normalize_url(u) for u in self.settings.worker_urls):
            await self.pool.add(url)
        self.pool.start()
        self._tick_task = self._loop.create_task(self._tick_loop(), name="l4-router-tick")
        # keepalive_timeout also bounds the wait for a new connection's first request head.
        runner = web.AppRunner(
            self.app,
            handler_cancellation=True,
            access_log=None,
            keepalive_timeout=self.settings.header_timeout,
            shutdown_timeout=2.0,  # `stop` cuts what is still running (`drain` first to wait for it)
        )
        await runner.setup()
        site = web.TCPSite(runner, self.settings.host, self.settings.port)
        await site.start()
        self._runner = runner
        self.port = runner.addresses[0][1]
        log.info(
            "l4 router on %s: policy %s, %d worker(s), %d healthy",
            self.url,
            self.policy.NAME,
            len(self.pool.workers),
            len(self.pool.healthy()),
        )

    async def drain(self, timeout: float | None = None) -> int:
        """Stop listening, refuse new requests (503) and wait for those in flight, at most
        `timeout` seconds (default: settings.drain_timeout). Returns how many were still running."""
        timeout = self.settings.drain_timeout if timeout is None else timeout
        self.draining = True
        if self._runner is not None:
            for site in list(self._runner.sites):
                await site.stop()
        running = self._active
        log.info("draining: %d request(s) in flight, waiting up to %g s", running, timeout)
        assert self._idle is not None
        with contextlib.suppress(TimeoutError):
            async with asyncio.timeout(timeout):
                await self._idle.wait()
        if self._active:
            log.warning("drain timed out with %d request(s) still running; they are cut", self._active)
        else:
            log.info("drained: every request in flight finished")
        return self._active

    async def stop(self) -> None:
        if self._tick_task is not None:
            self._tick_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._tick_task
            self._tick_task = None
        await self.pool.stop()
        if self._runner is not None:
            await self._runner.cleanup()
            self._runner = None
        await self.forwarder.close()
        if self._session is not None:
            await self._session.close()
            self._session = None

    async def _tick_loop(self) -> None:
        interval = self.settings.tick_interval
        while True:
            await asyncio.sleep(interval)
            try:
                moves = self.driver.tick(self.policy_now())
                if moves:
                    self.forwarder.dispatch(moves)
            except Exception:
                log.exception("policy tick failed")

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=self.settings.max_body_bytes)
        app[BODY_TIMEOUT] = self.settings.body_timeout
        app[MAX_BODY] = self.settings.max_body_bytes
        r = app.router
        r.add_post("/generate", self.generate)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        r.add_get("/health", self.health)
        r.add_get("/metrics", self.prometheus)
        r.add_get("/workers", self.list_workers)
        r.add_post("/workers", self.add_worker)
        r.add_delete("/workers", self.remove_worker)
        r.add_get("/l4/stages", self.stages)
        r.add_post("/abort_request", self.abort_request)
        admin.Admin(self).add_routes(r)
        return app

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        self._active += 1
        if self._idle is not None:
            self._idle.clear()
        try:
            return await self._guarded(request, handler)
        finally:
            self._active -= 1
            if not self._active and self._idle is not None:
                self._idle.set()

    async def _guarded(self, request: web.Request, handler) -> web.StreamResponse:
        v1 = request.path.startswith("/v1/")
        if self.draining and request.path not in OPEN_PATHS:
            response = self._error(v1, 503, "The router is shutting down.", "ServiceUnavailable")
            response.force_close()
            self.metrics.on_response(route_label(request), 503)
            return response
        key = self.settings.api_key
        if key is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                response = self._error(
                    v1, 401, "Unauthorized: a valid API key is required.", "AuthenticationError"
                )
                self.metrics.on_response(route_label(request), 401)
                return response
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = self._error(v1, 404, f"Not Found: {request.path}", "NotFoundError")
        except web.HTTPMethodNotAllowed:
            response = self._error(v1, 405, f"Method Not Allowed: {request.method}", "MethodNotAllowed")
        except web.HTTPRequestEntityTooLarge:
            limit = self.settings.max_body_bytes
            response = self._error(
                v1, 413, f"The request body is larger than the limit of {limit} bytes.", "RequestTooLarge"
            )  # aiohttp then reads and drops the rest for a while, so the client sees the answer
        except BodyTimeout as e:
            response = self._error(v1, 408, str(e), "RequestTimeout")
            response.force_close()
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = self._error(
                v1, 500, "Internal router error (see the router's log).", "InternalServerError"
            )
        self.metrics.on_response(route_label(request), response.status)
        return response

    @staticmethod
    def _error(v1: bool, status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
        body = openai.error_body(message, param, status, kind) if v1 else native.error_body(message)
        return json_response(body, status)


async def serve(settings: RouterSettings, stop: asyncio.Event, drain: bool = True) -> None:
    """Run a router until `stop` is set, then drain it (at most settings.drain_timeout) and stop."""
    router = Router(settings)
    await router.start()
    try:
        await stop.wait()
        if drain:
            await router.drain()
    finally:
        await router.stop()


class BackgroundRouter(BackgroundLoop):
    """A router on its own event loop in a daemon thread (tests, benchmarks, notebooks).

    with BackgroundRouter(RouterSettings(worker_urls=(w.url,), port=0)) as r:
        requests.post(r.url + "/generate", ...)
    """

    THREAD_NAME = "l4-router"
    WHAT = "the router"

    def __init__(
        self,
        settings: RouterSettings,
        policy: Policy | None = None,
        tokenizer: Tokenizer | None = None,
        start_timeout_s: float = 30.0,
    ) -> None:
        super().__init__(start_timeout_s)
        self.settings = settings
        self._policy = policy
        self._tokenizer = tokenizer

    @property
    def router(self) -> Router | None:
        return self._service

    def _create(self) -> Router:
        return Router(self.settings, self._policy, self._tokenizer)
