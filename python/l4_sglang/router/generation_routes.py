"""The generation routes: POST /generate (SGLang) and /v1/completions, /v1/chat/completions (OpenAI).

A mixin of `Router` (app.py): each handler parses its request (`native`,
`openai`), runs it through the forwarder, plain or streamed, and answers in
its API's shape; what the router cannot follow token by token goes through
to the worker's own route (`passthrough`). POST /abort_request ends them.
"""

from __future__ import annotations

import asyncio
import time
from typing import TYPE_CHECKING

from aiohttp import web

from l4_sglang import api_shapes
from l4_sglang.policy.base import NoWorkerAvailable
from l4_sglang.router import native, openai
from l4_sglang.router.generation import Generation
from l4_sglang.router.legs import WorkerRejected
from l4_sglang.router.web_io import SSE_HEADERS, MalformedJson, json_response, read_json, sse_event
from l4_sglang.text.tokens import OutputText

if TYPE_CHECKING:
    from l4_sglang.router.forwarding import Forwarder
    from l4_sglang.router.metrics import RouterMetrics
    from l4_sglang.router.passthrough import PassThrough
    from l4_sglang.router.settings import RouterSettings
    from l4_sglang.router.workers import WorkerPool
    from l4_sglang.text.tokens import Tokenizer

FALLBACK_CHAT_MAX_TOKENS = 128
"""Chat max_tokens when neither the client, --default-max-tokens nor any worker's context length says."""


class GenerationRoutes:
    if TYPE_CHECKING:  # what it uses of Router
        settings: RouterSettings
        tokenizer: Tokenizer
        metrics: RouterMetrics
        pool: WorkerPool
        forwarder: Forwarder
        passthrough: PassThrough
        _by_client_rid: dict[str, Generation]

        def now(self) -> float: ...
        def _served_models(self) -> set[str]: ...

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
            body = await read_json(request)
            req = native.parse_generate(body, self.tokenizer)
        except (MalformedJson, native.BadRequest) as e:
            return json_response(native.error_body(str(e)), 400)
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
                    return sse_event(out)

                try:
                    resp = await self._stream(request, gen, rid, write)
                except WorkerRejected as e:
                    return json_response(native.error_body(e.message), e.status)
                except NoWorkerAvailable as e:
                    return json_response(native.error_body(f"No worker available: {e}"), 503)
                self._done(route, gen, self.now())
                return resp
            try:
                await self._complete_all(gens, req.rids)
            except WorkerRejected as e:
                return json_response(native.error_body(e.message), e.status)
            except NoWorkerAvailable as e:
                return json_response(native.error_body(f"No worker available: {e}"), 503)
            now = self.now()
            outs = []
            for g, r, t in zip(gens, req.rids, trim, strict=True):
                text = g.text
                if text is None:
                    text = OutputText(self.tokenizer, t).update(g.output_ids, g.finish_reason)
                outs.append(native.response(g, text, r, now))
            resp = json_response(outs if req.is_batch else outs[0], headers={"x-l4-rid": gens[0].rid})
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
        return api_shapes.chat_open_ended_max_tokens(ctx, prompt_tokens), False

    async def _openai(self, request: web.Request, chat: bool) -> web.StreamResponse:
        arrival = self.now()
        route = request.path
        try:
            body = await read_json(request)
            if chat:
                req = openai.parse_chat(body, self.tokenizer, self._chat_default_max)
            else:
                req = openai.parse_completion(body, self.tokenizer)
        except MalformedJson as e:
            return json_response(openai.error_body(str(e)), 400)
        except native.BadRequest as e:
            return json_response(openai.error_body(e.message, e.param), 400)
        served = self._served_models()
        if served and req.model not in served:
            message = f"The model {req.model!r} does not exist; this router serves {sorted(served)}."
            return json_response(openai.error_body(message, "model", 404, "NotFoundError"), 404)
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
                        out += sse_event(openai.chunk(req, gen, created, "", role=True))
                    if final:
                        out += sse_event(openai.chunk(req, gen, created, delta, final=True))
                        if req.include_usage:
                            out += sse_event(openai.usage_chunk(req, gen, created))
                    elif delta:
                        out += sse_event(openai.chunk(req, gen, created, delta))
                    return out

                try:
                    resp = await self._stream(request, gen, req.rid, write)
                except WorkerRejected as e:
                    return json_response(openai.error_body(e.message, code=e.status), e.status)
                except NoWorkerAvailable as e:
                    return json_response(
                        openai.error_body(f"No worker available: {e}", None, 503, "ServiceUnavailable"), 503
                    )
                self._done(route, gen, self.now())
                return resp
            try:
                await self._complete(gen, req.rid)
            except WorkerRejected as e:
                return json_response(openai.error_body(e.message, code=e.status), e.status)
            except NoWorkerAvailable as e:
                return json_response(
                    openai.error_body(f"No worker available: {e}", None, 503, "ServiceUnavailable"), 503
                )
            answer = gen.text if gen.text is not None else text.update(gen.output_ids, gen.finish_reason)
            out = openai.response(req, gen, answer, created)
            resp = json_response(out, headers={"x-l4-rid": gen.rid, "x-l4-workers": ",".join(gen.workers)})
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
            body = await read_json(request)
        except MalformedJson as e:
            return json_response(native.error_body(str(e)), 400)
        if not isinstance(body, dict):
            return json_response(native.error_body("The request body must be a JSON object."), 400)
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
