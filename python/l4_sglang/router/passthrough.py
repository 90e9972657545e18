"""Pass-through: an OpenAI request the router cannot follow token by token, relayed whole.

Requests that ask for logprobs / top_logprobs, n > 1, tools, structured
output, echo or a list of prompts (`openai.passthrough_reason`) need answers
that generated ids alone cannot rebuild. They are routed by length as any
other request (the policy books them and hears them finish or abort, so the
worker counts as loaded while one runs); then the client's body goes
unchanged to that worker's own /v1/completions or /v1/chat/completions, and
the worker's answer comes back as it wrote it: status, JSON body, or the SSE
stream relayed chunk by chunk.

Such a request never migrates: the router cannot resume an answer it does
not read. It fails over only before its worker answered: one that cannot be
reached is reported to the pool and the request is routed again, at most
MAX_FAILOVERS times, then 503. A stream cut by the worker ends with an error
event. /abort_request (by the client's rid, or abort_all) closes the worker
connection, so the worker aborts it; the client gets a 400 error (an error
event then [DONE] on a stream). The policy hears the completion count of a plain answer (its usage);
a stream's count is not read.
"""

from __future__ import annotations

import contextlib
import json
import logging
from collections.abc import Callable

import aiohttp
from aiohttp import web

from l4_sglang.api_shapes import error_body
from l4_sglang.policy.base import NoWorkerAvailable
from l4_sglang.router.forwarding import Forwarder
from l4_sglang.router.generation import Generation
from l4_sglang.router.legs import MAX_FAILOVERS
from l4_sglang.router.workers import WorkerPool

log = logging.getLogger(__name__)

CONNECT_TIMEOUT_S = 10.0
_FINISHED = {"type": "stop", "message": "passed through"}
"""A relayed answer that ended: the policy is told the request finished."""


def _error(status: int, message: str, kind: str) -> web.Response:
    return web.json_response(error_body(message, None, status, kind), status=status)


def _completion_tokens(body: bytes) -> int:
    try:
        usage = json.loads(body).get("usage") or {}
        return int(usage.get("completion_tokens") or 0)
    except (ValueError, TypeError, AttributeError):
        return 0


class PassThrough:
    def __init__(
        self,
        forwarder: Forwarder,
        pool: WorkerPool,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
        headers: dict[str, str] | None = None,
    ) -> None:
        self.forwarder = forwarder
        self.pool = pool
        self._session = session
        self._clock = clock
        self._headers = {"Content-Type": "application/json", **(headers or {})}

    async def relay(
        self, request: web.Request, raw: bytes, gen: Generation, reason: str
    ) -> web.StreamResponse:
        """Route `gen`, send `raw` (the client's body) to the worker's route of the same path and
        relay its answer; the policy's booking is released whatever happens."""
        try:
            upstream, worker = await self._open(request.path, raw, gen)
        except NoWorkerAvailable as e:
            self.forwarder.end(gen)
            return _error(503, f"No worker available: {e}", "ServiceUnavailable")
        except BaseException:
            self.forwarder.end(gen)
            raise
        gen.legs, gen.workers = 1, [worker]
        gen.on_abort = upstream.close  # /abort_request: the worker sees its client leave and aborts it
        self.forwarder.metrics.on_leg(worker)
        headers = {
            "Content-Type": upstream.headers.get("Content-Type", "application/json"),
            "x-l4-rid": gen.rid,
            "x-l4-workers": worker,
            "x-l4-passthrough": reason,
        }
        try:
            async with upstream:
                if upstream.content_type == "text/event-stream":
                    return await self._relay_stream(request, upstream, gen, worker, headers)
                body = await upstream.read()
                gen.last_chunk = self._clock()
                if upstream.status == 200 and not gen.finished:
                    self.forwarder.report(gen, _completion_tokens(body))
                    gen.finish_reason = _FINISHED
                return web.Response(body=body, status=upstream.status, headers=headers)
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if gen.finished:  # aborted by /abort_request (SGLang answers an aborted request 400)
                return _error(400, gen.finish_reason.get("message", "Aborted"), "BadRequestError")
            self.pool.report_failure(worker, f"{type(e).__name__}: {e}")
            return _error(502, f"The worker {worker} broke off its answer: {e}", "BadGateway")
        finally:
            gen.on_abort = None
            self.forwarder.end(gen)

    async def _open(self, path: str, raw: bytes, gen: Generation) -> tuple[aiohttp.ClientResponse, str]:
        why = ""
        for attempt in range(MAX_FAILOVERS):
            worker = self.forwarder.book(gen, again=attempt > 0)
            try:
                upstream = await self._session().post(
                    worker + path,
                    data=raw,
                    headers=self._headers,
                    timeout=aiohttp.ClientTimeout(total=None, sock_connect=CONNECT_TIMEOUT_S),
                )
            except (aiohttp.ClientError, OSError, TimeoutError) as e:
                why = f"{type(e).__name__}: {e}"
                self.pool.report_failure(worker, why)
                log.info("pass-through to %s failed (%s); routing it again", worker, why)
                continue
            return upstream, worker
        raise NoWorkerAvailable(f"no worker took the request ({why})")

    async def _relay_stream(
        self,
        request: web.Request,
        upstream: aiohttp.ClientResponse,
        gen: Generation,
        worker: str,
        headers: dict[str, str],
    ) -> web.StreamResponse:
        resp = web.StreamResponse(status=upstream.status, headers={**headers, "Cache-Control": "no-cache"})
        await resp.prepare(request)
        try:
            async for data in upstream.content.iter_any():
                if gen.finished:
                    raise aiohttp.ClientConnectionError("aborted")  # closed while a chunk was read
                if gen.first_token is None:
                    gen.first_token = self._clock()
                try:
                    await resp.write(data)
                except ConnectionError:
                    return resp  # the client left: closing upstream makes the worker abort it
        except (aiohttp.ClientError, OSError, TimeoutError) as e:
            if gen.finished:  # aborted by /abort_request
                event = error_body(gen.finish_reason.get("message", "Aborted"), None, 400, "BadRequestError")
            else:
                self.pool.report_failure(worker, f"{type(e).__name__}: {e}")
                event = error_body(f"The worker {worker} broke off its answer: {e}", None, 502, "BadGateway")
            with contextlib.suppress(ConnectionError):
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        if gen.finished:  # aborted as the stream ended
            event = error_body(gen.finish_reason.get("message", "Aborted"), None, 400, "BadRequestError")
            with contextlib.suppress(ConnectionError):
                await resp.write(b"data: " + json.dumps(event).encode() + b"\n\ndata: [DONE]\n\n")
            return resp
        gen.last_chunk = self._clock()
        gen.finish_reason = _FINISHED
        return resp
