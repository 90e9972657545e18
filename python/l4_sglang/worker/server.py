"""The emulated worker's HTTP server (aiohttp): SGLang 0.5's routes over the engine.

Routes: POST /generate (text or input_ids, one or a batch; SSE with cumulative
output_ids when streaming), POST /v1/completions, POST /v1/chat/completions,
GET /v1/models, GET /health, GET /health_generate, GET /server_info and
/get_server_info, GET /model_info and /get_model_info, GET /v1/loads, GET
/get_load, GET /metrics, POST /abort_request, GET|POST /flush_cache.
Extensions: `hash_ids` (trace block hashes, 512 tokens a block) on a request
keys the prefix cache; GET /emulated/steps is a debug log of the engine's
steps (modelled cost, start, deadline, when applied) and its lag.

Every response carries `x-l4-emulated: 1`. Bad input gets a clean 400 in the
route's error shape; a handler bug gets a 500, never a dead server. A client
that goes away (handler cancelled, or a write to a closed stream) aborts its
request in the engine, as SGLang does.
"""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import logging
import time
import uuid
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass

from aiohttp import web

from l4_sglang.background import BackgroundLoop
from l4_sglang.core import DEFAULT_COST_MODEL, CostModel
from l4_sglang.text import builtin
from l4_sglang.worker import openai_api, protocol, server_info
from l4_sglang.worker.engine import Engine, EngineConfig, Request, SamplingParams
from l4_sglang.worker.metrics import WorkerMetrics
from l4_sglang.worker.protocol import BadRequest, Clock, Limits, dumps
from l4_sglang.worker.runner import EngineRunner
from l4_sglang.worker.status_routes import StatusRoutes
from l4_sglang.worker.vocab import load_vocab
from l4_sglang.worker.web_io import MalformedJson, json_response, read_json, sse_event

DEFAULT_MODEL_PATH = "meta-llama/Meta-Llama-3-8B"
DEFAULT_CONTEXT_LENGTH = 131072

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class WorkerSettings:
    host: str = "127.0.0.1"
    port: int = 30000  # 0: any free port (see EmulatedWorker.port once started)
    cost_model: str = DEFAULT_COST_MODEL
    time_scale: float = 1.0
    max_total_tokens: int | None = None  # None: the cost model's KV capacity
    max_running_requests: int | None = None
    chunked_prefill_size: int | None = None
    seed: int = 0
    model_path: str = DEFAULT_MODEL_PATH
    context_length: int = DEFAULT_CONTEXT_LENGTH
    skip_tokenizer_init: bool = False
    disable_radix_cache: bool = False
    tokenizer_path: str | None = None
    """The model's tokenizer.json (or its folder): prompts, output text and drawn ids follow it."""
    vocab_size: int | None = None
    """Without a tokenizer path: draw ids from the built-in vocabulary's first this many."""
    # This process's own HTTP round trip (seconds, wall clock), taken out of the modelled request
    # overhead; see host_latency.py.
    host_latency_s: float = 0.0


class EmulatedWorker(StatusRoutes):
    """One emulated SGLang server: engine, runner, metrics and the aiohttp app."""

    def __init__(self, settings: WorkerSettings) -> None:
        if not settings.time_scale > 0:
            raise ValueError(f"invalid time_scale: must be > 0, got {settings.time_scale}")
        self.settings = settings
        self.cost_model = CostModel.load(settings.cost_model)
        params = self.cost_model.params
        self.vocab = vocab = load_vocab(settings.tokenizer_path, settings.vocab_size)
        self.config = EngineConfig(
            max_total_tokens=settings.max_total_tokens or int(params["kv_capacity_tokens"]),
            max_running_requests=settings.max_running_requests or int(params["max_running_requests"]),
            chunked_prefill_size=(
                settings.chunked_prefill_size
                if settings.chunked_prefill_size is not None
                else int(params["chunked_prefill_size"])
            ),
            context_length=settings.context_length,
            seed=settings.seed,
            eos_token_ids=frozenset() if vocab.eos_id is None else frozenset({vocab.eos_id}),
            enable_prefix_cache=not settings.disable_radix_cache,
        )
        self.identity = server_info.WorkerIdentity(
            model_path=settings.model_path,
            host=settings.host,
            port=settings.port,
            cost_model=self.cost_model.name,
            time_scale=settings.time_scale,
            skip_tokenizer_init=settings.skip_tokenizer_init,
            max_total_tokens_arg=settings.max_total_tokens,
            max_running_requests_arg=settings.max_running_requests,
        )
        self.limits = Limits(context_length=settings.context_length, vocab=vocab)
        self.metrics = WorkerMetrics(settings.model_path, settings.context_length)
        self.engine = Engine(self.config, self.cost_model.step_time, vocab.tok.decode, vocab.picker())
        self.runner: EngineRunner | None = None
        self.clock = Clock(offset=0.0)
        self.app = self._build_app()
        self._site_runner: web.AppRunner | None = None
        builtin.encode("warm up the tables")

    # ---- lifecycle ----------------------------------------------------------

    @property
    def port(self) -> int:
        return self.identity.port

    @property
    def url(self) -> str:
        return f"http://{self.identity.host}:{self.identity.port}"

    async def start(self) -> None:
        site_runner = web.AppRunner(self.app, handler_cancellation=True, access_log=None)
        await site_runner.setup()
        site = web.TCPSite(site_runner, self.settings.host, self.settings.port)
        await site.start()
        self._site_runner = site_runner
        bound = site_runner.addresses[0][1]
        self.identity = dataclasses.replace(self.identity, port=bound)

    async def stop(self) -> None:
        if self._site_runner is not None:
            await self._site_runner.cleanup()
            self._site_runner = None

    async def _on_startup(self, app: web.Application) -> None:
        loop = asyncio.get_running_loop()
        self.clock = Clock(offset=time.time() - loop.time())
        overhead = float(self.cost_model.params.get("request_overhead_s", 0.0))
        self.runner = EngineRunner(
            self.engine, self.settings.time_scale, overhead, host_latency_s=self.settings.host_latency_s
        )
        self.runner.on_update = self.metrics.on_update
        self.runner.on_step = self.metrics.on_step
        self.runner.start()

    async def _on_shutdown(self, app: web.Application) -> None:
        # Before aiohttp waits for open handlers: end their streams instead of waiting them out.
        if self.runner is not None:
            self.runner.abort_all("Abort: the server is shutting down")

    async def _on_cleanup(self, app: web.Application) -> None:
        if self.runner is not None:
            await self.runner.stop()

    def _build_app(self) -> web.Application:
        app = web.Application(middlewares=[self._middleware], client_max_size=256 * 1024**2)
        app.on_startup.append(self._on_startup)
        app.on_shutdown.append(self._on_shutdown)
        app.on_cleanup.append(self._on_cleanup)
        app.on_response_prepare.append(self._mark_emulated)
        r = app.router
        r.add_post("/generate", self.generate)
        r.add_post("/v1/completions", self.completions)
        r.add_post("/v1/chat/completions", self.chat_completions)
        r.add_get("/v1/models", self.models)
        r.add_get("/health", self.health)
        r.add_get("/health_generate", self.health_generate)
        for path in ("/server_info", "/get_server_info"):
            r.add_get(path, self.get_server_info)
        for path in ("/model_info", "/get_model_info"):
            r.add_get(path, self.get_model_info)
        r.add_get("/v1/loads", self.v1_loads)
        r.add_get("/get_load", self.get_load)
        r.add_get("/metrics", self.prometheus)
        r.add_post("/abort_request", self.abort_request)
        r.add_route("*", "/flush_cache", self.flush_cache)
        r.add_get("/emulated/steps", self.emulated_steps)
        return app

    @staticmethod
    async def _mark_emulated(request: web.Request, response: web.StreamResponse) -> None:
        response.headers["x-l4-emulated"] = "1"

    @web.middleware
    async def _middleware(self, request: web.Request, handler) -> web.StreamResponse:
        try:
            response = await handler(request)
        except web.HTTPNotFound:
            response = json_response({"detail": "Not Found"}, 404)
        except web.HTTPMethodNotAllowed:
            response = json_response({"detail": "Method Not Allowed"}, 405)
        except web.HTTPException:
            raise
        except (asyncio.CancelledError, ConnectionError):
            raise
        except Exception:
            log.exception("unhandled error in %s %s", request.method, request.path)
            response = web.Response(status=500, text="Internal Server Error")
        resource = request.match_info.route.resource
        if resource is not None:
            self.metrics.on_http(resource.canonical, request.method, response.status)
        return response

    # ---- requests into the engine --------------------------------------------

    def _submit(
        self, rid: str | None, ids: list[int], params: SamplingParams, hash_ids: list[int] | None
    ) -> tuple[Request, asyncio.Event]:
        assert self.runner is not None
        req = Request(rid=rid or uuid.uuid4().hex, input_ids=ids, params=params, hash_ids=hash_ids)
        try:
            event = self.runner.submit(req)
        except ValueError as e:
            raise BadRequest(str(e)) from None
        return req, event

    @staticmethod
    async def _updates(req: Request, event: asyncio.Event) -> AsyncIterator[None]:
        """Yields after each engine update of `req`, until it has finished."""
        while True:
            await event.wait()
            event.clear()
            yield
            if req.finished:
                return

    @contextlib.contextmanager
    def _owned(self, *reqs: Request) -> Iterator[None]:
        """Aborts the requests if the handler ends before they finish (client gone, cancelled)."""
        try:
            yield
        finally:
            for req in reqs:
                if not req.finished and self.runner is not None:
                    self.runner.abort(req.rid, "Abort: the client disconnected")

    async def _wait(self, req: Request, event: asyncio.Event) -> None:
        with self._owned(req):
            async for _ in self._updates(req, event):
                pass

    async def _open_stream(self, request: web.Request) -> web.StreamResponse:
        resp = web.StreamResponse(headers={"Content-Type": "text/event-stream", "Cache-Control": "no-cache"})
        await resp.prepare(request)
        return resp

    # ---- /generate ---------------------------------------------------------

    async def generate(self, request: web.Request) -> web.StreamResponse:
        try:
            body = await read_json(request)
        except MalformedJson as e:
            return json_response(protocol.malformed_json_body(str(e), request.path), 400)
        try:
            inputs, is_batch, stream = protocol.parse_generate(body, self.limits)
            submitted = []
            try:
                for inp in inputs:
                    submitted.append(self._submit(inp.rid, inp.input_ids, inp.params, inp.hash_ids))
            except BadRequest:
                for req, _ in submitted:
                    self.runner.abort(req.rid, "Abort: another request of its batch was rejected")
                raise
        except BadRequest as e:
            return json_response(protocol.error_body(str(e)), 400)
        with_text = not self.settings.skip_tokenizer_init
        if stream:
            req, event = submitted[0]
            return await self._stream_generate(request, req, event, with_text)
        await asyncio.gather(*(self._wait(req, event) for req, event in submitted))
        now = self.runner.now()
        outs = [
            protocol.generate_response(req, self.clock, now, with_text, self.vocab) for req, _ in submitted
        ]
        return json_response(outs if is_batch else outs[0])

    async def _stream_generate(
        self, request: web.Request, req: Request, event: asyncio.Event, with_text: bool
    ) -> web.StreamResponse:
        sent = 0
        ids_text = ""  # the cumulative output_ids, grown in place rather than re-joined per chunk
        text = protocol.TextStream(self.vocab)
        first = True
        encoder = protocol.StreamMetaEncoder(self.clock)
        with self._owned(req), contextlib.suppress(ConnectionError):
            resp = await self._open_stream(request)
            async for _ in self._updates(req, event):
                out = req.output_ids
                n = len(out)
                if n == sent and not req.finished:
                    continue
                if n > sent:
                    new = ",".join(map(str, out[sent:n]))
                    ids_text = f"{ids_text},{new}" if ids_text else new
                    sent = n
                meta = encoder.encode(req, self.runner.now(), final=req.finished, first_chunk=first)
                first = False
                text_part = f'"text":{dumps(text.update(req))},' if with_text else ""
                payload = f'{{{text_part}"output_ids":[{ids_text}],"meta_info":{meta}}}'
                await resp.write(sse_event(payload))
            await resp.write(b"data: [DONE]\n\n")
        return resp

    # ---- OpenAI routes -----------------------------------------------------

    async def completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=False)

    async def chat_completions(self, request: web.Request) -> web.StreamResponse:
        return await self._openai(request, chat=True)

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        try:
            body = await read_json(request)
        except MalformedJson as e:
            return json_response(openai_api.error_body(f"JSON decode error: {e}"), 400)
        try:
            parse = openai_api.parse_chat if chat else openai_api.parse_completion
            inp = parse(body, self.limits)
            submitted = self._submit_choices(inp)
        except BadRequest as e:
            return json_response(openai_api.error_body(str(e), e.param), 400)
        created = int(time.time())
        reqs = [req for req, _ in submitted]
        if not inp.stream:
            await asyncio.gather(*(self._wait(req, event) for req, event in submitted))
            texts = [protocol.output_text(req, self.vocab) for req in reqs]
            return json_response(openai_api.response(inp, reqs, texts, created, self.vocab))
        rid = inp.rid or reqs[0].rid
        with self._owned(*reqs), contextlib.suppress(ConnectionError):
            resp = await self._open_stream(request)
            # Choice by choice: the engine runs them together, a later one sends what it has so far.
            for index, (req, event) in enumerate(submitted):
                await self._stream_choice(resp, inp, rid, index, req, event, created)
            if inp.include_usage:
                await resp.write(sse_event(dumps(openai_api.usage_chunk(inp, rid, reqs, created))))
            await resp.write(b"data: [DONE]\n\n")
        return resp

    def _submit_choices(self, inp: openai_api.OpenAIInput) -> list[tuple[Request, asyncio.Event]]:
        """One engine request per choice, in choice order; all or none are submitted."""
        count = len(inp.prompts) * inp.n
        submitted = []
        try:
            for i, ids in enumerate(inp.prompts):
                for j in range(inp.n):
                    index = inp.choice_index(i, j)
                    rid = inp.rid if count == 1 or inp.rid is None else f"{inp.rid}-{index}"
                    submitted.append(self._submit(rid, ids, inp.params, inp.hash_ids))
        except BadRequest:
            for req, _ in submitted:
                self.runner.abort(req.rid, "Abort: another choice of its request was rejected")
            raise
        return submitted

    async def _stream_choice(
        self,
        resp: web.StreamResponse,
        inp: openai_api.OpenAIInput,
        rid: str,
        index: int,
        req: Request,
        event: asyncio.Event,
        created: int,
    ) -> None:
        text = protocol.TextStream(self.vocab)
        head = inp.echo[index // inp.n] if inp.echo else ""
        emitted = 0  # characters of the text already sent
        sent_ids = 0  # output ids whose logprobs were sent
        offset = base = len(head)
        if inp.chat:
            await resp.write(
                sse_event(dumps(openai_api.chunk(inp, rid, created, "", role=True, index=index)))
            )
        async for _ in self._updates(req, event):
            so_far = text.update(req)
            delta = so_far[emitted:]  # empty when a stop string cut back what was sent
            emitted += len(delta)
            ids = req.output_ids[sent_ids:]
            lp = openai_api.logprobs_of(inp, ids, sent_ids, offset, self.vocab) if ids else None
            sent_ids += len(ids)
            offset = base + emitted
            if head:
                delta, head = head + delta, ""
            if req.finished:
                finish, matched = openai_api.finish_fields(req)
                last = openai_api.chunk(
                    inp, rid, created, delta, finish=finish, matched=matched, index=index, logprobs=lp
                )
                await resp.write(sse_event(dumps(last)))
            elif delta or lp:
                await resp.write(
                    sse_event(dumps(openai_api.chunk(inp, rid, created, delta, index=index, logprobs=lp)))
                )

    async def models(self, request: web.Request) -> web.Response:
        return json_response(
            openai_api.models_list(self.settings.model_path, self.settings.context_length, int(time.time()))
        )


class BackgroundWorker(BackgroundLoop):
    """An emulated worker on its own event loop in a daemon thread (tests, notebooks).

    with BackgroundWorker(WorkerSettings(port=0, time_scale=0.1)) as w:
        requests.post(w.url + "/generate", ...)
    """

    THREAD_NAME = "l4-emulated-worker"
    WHAT = "the emulated worker"

    def __init__(self, settings: WorkerSettings, start_timeout_s: float = 30.0) -> None:
        super().__init__(start_timeout_s)
        self.settings = settings

    @property
    def worker(self) -> EmulatedWorker | None:
        return self._service

    def _create(self) -> EmulatedWorker:
        return EmulatedWorker(self.settings)
