"""The router's HTTP server (aiohttp): routes, lifecycle, the policy's clock.

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
import json
import logging
import math
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import aiohttp
from aiohttp import web

from l4_sglang.background import BackgroundLoop
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel
from l4_sglang.policy.base import NoWorkerAvailable, Policy
from l4_sglang.policy.driver import PolicyDriver
from l4_sglang.policy.registry import make_policy
from l4_sglang.router import admin, native, openai
from l4_sglang.router.forwarding import Forwarder
from l4_sglang.router.generation import Generation
from l4_sglang.router.legs import WorkerRejected
from l4_sglang.router.metrics import RouterMetrics
from l4_sglang.router.passthrough import PassThrough
from l4_sglang.router.workers import BadWorkerUrl, WorkerPool, normalize_url
from l4_sglang.text.tokens import OutputText, Tokenizer, load_tokenizer

log = logging.getLogger("l4_sglang.router")

OPEN_PATHS = frozenset({"/health", "/metrics"}) | admin.OPEN_PATHS
SSE_HEADERS = {"Content-Type": "text/event-stream", "Cache-Control": "no-cache"}
JSON_HEADERS = {"Content-Type": "application/json; charset=utf-8"}
_ENCODE = json.JSONEncoder(separators=(",", ":"), ensure_ascii=False).encode
"""json.dumps with these arguments builds an encoder per call."""
_BODY_TIMEOUT = web.AppKey("body_timeout", float)
_MAX_BODY = web.AppKey("max_body_bytes", int)
FALLBACK_CHAT_MAX_TOKENS = 128
"""Chat max_tokens when neither the client, --default-max-tokens nor any worker's context length says."""


@dataclass(frozen=True)
class RouterSettings:
    worker_urls: tuple[str, ...] = ()
    policy: str = "l4"
    policy_overrides: Mapping[str, Any] = field(default_factory=dict)
    cost_model: str = DEFAULT_COST_MODEL
    tokenizer_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000  # 0: any free port (Router.port once started)
    api_key: str | None = None
    worker_api_key: str | None = None
    load_poll_interval: float = 0.5
    tick_interval: float = 0.25
    seed: int = 0
    model_name: str | None = None
    default_max_tokens: int | None = None
    failure_threshold: int = 2
    health_timeout: float = 5.0
    # Workers emulated at this time scale: the policy's clock runs 1/scale times as fast, so its
    # rates and the cost model it prices them with share one time base.
    worker_time_scale: float = 1.0
    recovery_threshold: int = 2
    """Health checks in a row an ejected worker must pass to be taken back."""
    max_body_bytes: int = 32 * 1024**2
    body_timeout: float = 30.0
    header_timeout: float = 30.0
    drain_timeout: float = 30.0
    plain_max_new_tokens: int = 1024
    """A request that does not stream and asks for at most this many new tokens goes to its worker
    as one plain (non-streaming) request when the policy will not move it; 0: always stream."""

    def __post_init__(self) -> None:
        floats = ("load_poll_interval", "tick_interval", "health_timeout", "worker_time_scale")
        for name in (*floats, "body_timeout", "header_timeout", "drain_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"invalid {name}: must be > 0, got {value!r}")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError(f"invalid default_max_tokens: must be >= 1, got {self.default_max_tokens}")
        for name in ("max_body_bytes", "failure_threshold", "recovery_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"invalid {name}: must be an integer >= 1, got {value!r}")
        value = self.plain_max_new_tokens
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"invalid plain_max_new_tokens: must be an integer >= 0, got {value!r}")
        for url in self.worker_urls:
            normalize_url(url)


def _finite_or_none(x: float | None) -> float | None:
    return x if x is not None and math.isfinite(x) else None


def _json(obj: Any, status: int = 200, headers: Mapping[str, str] | None = None) -> web.Response:
    body = _ENCODE(obj).encode("utf-8", "backslashreplace")
    # Headers given whole: aiohttp's content_type/charset setters parse and rebuild them.
    return web.Response(
        body=body, status=status, headers={**JSON_HEADERS, **headers} if headers else JSON_HEADERS
    )


def _sse(obj: Any) -> bytes:
    text = _ENCODE(obj)
    return b"data: " + text.encode("utf-8", "backslashreplace") + b"\n\n"


def _route_label(request: web.Request) -> str:
    """The route a request matched, for metric labels ("other" for none: paths are unbounded)."""
    resource = request.match_info.route.resource
    return resource.canonical if resource is not None else "other"


class _MalformedJson(ValueError):
    pass


class _BodyTimeout(Exception):
    pass


async def _read_json(request: web.Request) -> Any:
    app = request.app  # its own keys: request.config_dict builds a chain of every app per request
    limit, size = app[_MAX_BODY], request.content_length
    if size is not None and size > limit:
        raise web.HTTPRequestEntityTooLarge(max_size=limit, actual_size=size)
    if request.content.is_eof():  # the whole body came with the head: no timer to arm
        raw = await request.read()
    else:
        timeout = app[_BODY_TIMEOUT]
        try:
            async with asyncio.timeout(timeout):
                raw = await request.read()
        except TimeoutError:
            raise _BodyTimeout(f"The request body was not received within {timeout:g} s.") from None
    try:
        return json.loads(raw)
    except (ValueError, UnicodeDecodeError) as e:
        raise _MalformedJson(f"JSON decode error: {e}") from None


class Router:
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
        app[_BODY_TIMEOUT] = self.settings.body_timeout
        app[_MAX_BODY] = self.settings.max_body_bytes
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
            self.metrics.on_response(_route_label(request), 503)
            return response
        key = self.settings.api_key
        if key is not None and request.path not in OPEN_PATHS:
            given = request.headers.get("Authorization", "")
            if not hmac.compare_digest(given.encode(), f"Bearer {key}".encode()):
                response = self._error(
                    v1, 401, "Unauthorized: a valid API key is required.", "AuthenticationError"
                )
                self.metrics.on_response(_route_label(request), 401)
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
        except _BodyTimeout as e:
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
        self.metrics.on_response(_route_label(request), response.status)
        return response

    @staticmethod
    def _error(v1: bool, status: int, message: str, kind: str = "BadRequestError", param: str | None = None):
        body = openai.error_body(message, param, status, kind) if v1 else native.error_body(message)
        return _json(body, status)

    # ---- generation ----------------------------------------------------------

    def _done(self, route: str, gen: Generation, finished_at: float) -> None:
        m = self.metrics
        if gen.first_token is not None:
            m.on_ttft(route, gen.first_token - gen.arrival)
        if gen.finished:
            m.on_e2e(route, finished_at - gen.arrival)
        if gen.first_sent is not None and gen.last_chunk is not None:
            m.on_added_latency(route, (gen.first_sent - gen.arrival) + (finished_at - gen.last_chunk))

    async def _complete(self, gen: Generation, client_rid: str | None) -> Generation:
        """Run a generation to its end (raises WorkerRejected / NoWorkerAvailable before any output)."""
        if client_rid:
            self._by_client_rid[client_rid] = gen
        try:
            await self.forwarder.complete(gen)
        finally:
            self.forwarder.end(gen)
            if client_rid:
                self._by_client_rid.pop(client_rid, None)
        return gen

    async def _complete_all(self, gens: list[Generation], rids: list[str | None]) -> None:
        if len(gens) == 1:
            await self._complete(gens[0], rids[0])
            return
        tasks = [asyncio.ensure_future(self._complete(g, r)) for g, r in zip(gens, rids, strict=True)]
        try:
            await asyncio.gather(*tasks)
        finally:
            for t in tasks:
                t.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

    async def _stream(
        self, request: web.Request, gen: Generation, client_rid: str | None, writer
    ) -> web.StreamResponse:
        """Stream a generation; `writer(gen, final)` gives the bytes for each update.

        Errors before the first token come back as a JSON error (the caller's
        shape, via WorkerRejected / NoWorkerAvailable); later ones end the
        stream with finish reason abort.
        """
        if client_rid:
            self._by_client_rid[client_rid] = gen
        updates = self.forwarder.run(gen)
        resp: web.StreamResponse | None = None
        try:
            first = True
            async for _ in updates:
                if resp is None:
                    resp = web.StreamResponse(headers={**SSE_HEADERS, "x-l4-rid": gen.rid})
                    await resp.prepare(request)
                data = writer(gen, first=first, final=gen.finished)
                first = False
                if data:
                    await resp.write(data)
                if gen.finished:
                    break
            if resp is None:  # ended before any update (e.g. given up while resuming)
                resp = web.StreamResponse(headers={**SSE_HEADERS, "x-l4-rid": gen.rid})
                await resp.prepare(request)
                await resp.write(writer(gen, first=True, final=True))
            await resp.write(b"data: [DONE]\n\n")
        except ConnectionError:
            pass  # the client went away: `end` aborts the request on its worker
        finally:
            await updates.aclose()
            self.forwarder.end(gen)
            if client_rid:
                self._by_client_rid.pop(client_rid, None)
        return resp

    async def generate(self, request: web.Request) -> web.StreamResponse:
        arrival = self.now()
        try:
            body = await _read_json(request)
            req = native.parse_generate(body, self.tokenizer)
        except (_MalformedJson, native.BadRequest) as e:
            return _json(native.error_body(str(e)), 400)
        route = "/generate"
        trim = [s.sampling.get("no_stop_trim") is not True for s in req.specs]
        gens = [self.forwarder.new(s, arrival) for s in req.specs]
        self.metrics.in_flight += len(gens)
        try:
            if req.stream:
                gen, rid = gens[0], req.rids[0]
                text = OutputText(self.tokenizer, trim[0])

                def write(gen: Generation, first: bool, final: bool) -> bytes:
                    now = self.now()
                    out = {"text": text.update(gen.output_ids, gen.finish_reason)}
                    out["output_ids"] = list(gen.output_ids)
                    out["meta_info"] = native.meta_info(gen, rid, now, final=final)
                    return _sse(out)

                try:
                    resp = await self._stream(request, gen, rid, write)
                except WorkerRejected as e:
                    return _json(native.error_body(e.message), e.status)
                except NoWorkerAvailable as e:
                    return _json(native.error_body(f"No worker available: {e}"), 503)
                self._done(route, gen, self.now())
                return resp
            try:
                await self._complete_all(gens, req.rids)
            except WorkerRejected as e:
                return _json(native.error_body(e.message), e.status)
            except NoWorkerAvailable as e:
                return _json(native.error_body(f"No worker available: {e}"), 503)
            now = self.now()
            outs = []
            for g, r, t in zip(gens, req.rids, trim, strict=True):
                text = g.text
                if text is None:
                    text = OutputText(self.tokenizer, t).update(g.output_ids, g.finish_reason)
                outs.append(native.response(g, text, r, now))
            resp = _json(outs if req.is_batch else outs[0], headers={"x-l4-rid": gens[0].rid})
            for g in gens:
                self._done(route, g, self.now())
            return resp
        finally:
            self.metrics.in_flight -= len(gens)

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    def _chat_default_max(self, prompt_tokens: int) -> tuple[int, bool]:
        if self.settings.default_max_tokens is not None:
            return self.settings.default_max_tokens, True
        ctx = self.pool.context_length()
        if ctx is None:
            return FALLBACK_CHAT_MAX_TOKENS, True
        return max(ctx - prompt_tokens - 1, 1), False

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = self.now()
        route = request.path
        try:
            body = await _read_json(request)
            if chat:
                req = openai.parse_chat(body, self.tokenizer, self._chat_default_max)
            else:
                req = openai.parse_completion(body, self.tokenizer)
        except _MalformedJson as e:
            return _json(openai.error_body(str(e)), 400)
        except native.BadRequest as e:
            return _json(openai.error_body(e.message, e.param), 400)
        served = self._served_models()
        if served and req.model not in served:
            message = f"The model {req.model!r} does not exist; this router serves {sorted(served)}."
            return _json(openai.error_body(message, "model", 404, "NotFoundError"), 404)
        gen = self.forwarder.new(req.spec, arrival)
        if req.passthrough is not None:
            return await self._passthrough(request, gen, req.passthrough, req.rid)
        created = int(time.time())
        text = OutputText(self.tokenizer, req.spec.sampling.get("no_stop_trim") is not True)
        self.metrics.in_flight += 1
        try:
            if req.stream:
                emitted = [0]

                def write(gen: Generation, first: bool, final: bool) -> bytes:
                    so_far = text.update(gen.output_ids, gen.finish_reason)
                    delta = so_far[emitted[0] :]
                    emitted[0] += len(delta)
                    out = b""
                    if first and req.chat:
                        out += _sse(openai.chunk(req, gen, created, "", role=True))
                    if final:
                        out += _sse(openai.chunk(req, gen, created, delta, final=True))
                        if req.include_usage:
                            out += _sse(openai.usage_chunk(req, gen, created))
                    elif delta:
                        out += _sse(openai.chunk(req, gen, created, delta))
                    return out

                try:
                    resp = await self._stream(request, gen, req.rid, write)
                except WorkerRejected as e:
                    return _json(openai.error_body(e.message, code=e.status), e.status)
                except NoWorkerAvailable as e:
                    return _json(
                        openai.error_body(f"No worker available: {e}", None, 503, "ServiceUnavailable"), 503
                    )
                self._done(route, gen, self.now())
                return resp
            try:
                await self._complete(gen, req.rid)
            except WorkerRejected as e:
                return _json(openai.error_body(e.message, code=e.status), e.status)
            except NoWorkerAvailable as e:
                return _json(
                    openai.error_body(f"No worker available: {e}", None, 503, "ServiceUnavailable"), 503
                )
            answer = gen.text if gen.text is not None else text.update(gen.output_ids, gen.finish_reason)
            out = openai.response(req, gen, answer, created)
            resp = _json(out, headers={"x-l4-rid": gen.rid, "x-l4-workers": ",".join(gen.workers)})
            self._done(route, gen, self.now())
            return resp
        finally:
            self.metrics.in_flight -= 1

    async def _passthrough(
        self, request: web.Request, gen: Generation, reason: str, client_rid: str | None
    ) -> web.StreamResponse:
        raw = await request.read()  # the body as the client sent it (aiohttp kept it)
        self.metrics.in_flight += 1
        if client_rid:
            self._by_client_rid[client_rid] = gen
        try:
            resp = await self.passthrough.relay(request, raw, gen, reason)
        finally:
            self.metrics.in_flight -= 1
            if client_rid:
                self._by_client_rid.pop(client_rid, None)
        self._done(request.path, gen, self.now())
        return resp

    async def abort_request(self, request: web.Request) -> web.Response:
        try:
            body = await _read_json(request)
        except _MalformedJson as e:
            return _json(native.error_body(str(e)), 400)
        if not isinstance(body, dict):
            return _json(native.error_body("The request body must be a JSON object."), 400)
        if body.get("abort_all") is True:
            targets = list(self.forwarder.jobs.values())
        else:
            rid = body.get("rid")
            rids = rid if isinstance(rid, list) else [rid]
            targets = []
            for r in rids:
                if isinstance(r, str):
                    gen = self._by_client_rid.get(r) or self.forwarder.jobs.get(r)
                    if gen is not None:
                        targets.append(gen)
        for gen in targets:
            self.forwarder.abort(gen, "Abort by /abort_request")
        return web.Response(status=200)

    # ---- info and admin -------------------------------------------------------

    async def health(self, request: web.Request) -> web.Response:
        if self.draining:
            return _json({"status": "draining", "healthy_workers": len(self.pool.healthy())}, 503)
        healthy = self.pool.healthy()
        if healthy:
            return _json({"status": "ok", "healthy_workers": len(healthy)})
        return _json({"status": "no healthy worker", "healthy_workers": 0}, 503)

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
        return _json(openai.models_list(name, self.pool.context_length(), int(time.time())))

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
        return _json({"policy": self.policy.NAME, "workers": out})

    async def add_worker(self, request: web.Request) -> web.Response:
        try:
            body = await _read_json(request)
        except _MalformedJson as e:
            return _json(native.error_body(str(e)), 400)
        url = body.get("url") if isinstance(body, dict) else None
        if url is None:
            url = request.query.get("url")
        try:
            url = normalize_url(url)
        except BadWorkerUrl as e:
            return _json(native.error_body(str(e)), 400)
        existed = url in self.pool
        state = await self.pool.add(url)
        return _json({"url": url, "added": not existed, "healthy": state.healthy})

    async def remove_worker(self, request: web.Request) -> web.Response:
        raw = request.query.get("url")
        if raw is None and request.can_read_body:
            with contextlib.suppress(_MalformedJson):
                body = await _read_json(request)
                raw = body.get("url") if isinstance(body, dict) else None
        try:
            url = normalize_url(raw)
        except BadWorkerUrl as e:
            return _json(native.error_body(str(e)), 400)
        if not self.pool.remove(url):
            return _json(native.error_body(f"no worker {url} is registered"), 404)
        return _json({"url": url, "removed": True})

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
            body["predicted_mean_e2e_s"] = _finite_or_none(layout.predicted_mean_e2e_s)
            body["updated_at"] = layout.updated_at
        body.update(self._l4_status())
        return _json(body)

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
            "current_cost": _finite_or_none(last.current_cost),
            "proposed_cost": _finite_or_none(last.proposed_cost),
            "gain": _finite_or_none(last.gain),
        }
        return out


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
