"""One request's life on the workers: route, stream, migrate, fail over, stitch.

The request's own shapes are in `generation.py`, a leg's in `legs.py`; plain
legs (`plain_legs.py`) and moves (`migration.py`) are mixins of `Forwarder`.

The router talks to a worker with `POST /generate` and `input_ids`, as a
rule with `"stream": true`, so it sees every generated id. A request runs as
one or more *legs*, each one worker request with its own rid (`<rid>`, then
`<rid>-2`, `<rid>-3`, ...). A leg's connection (`http1.WorkerHttp.post_stream`)
splits the worker's SSE lines as they arrive and puts their payloads in the
leg's queue, with no task of its own; `Forwarder.run` consumes it, appends
the new ids to the request's output and reports progress to the policy.
Every policy call goes through the `PolicyDriver` (policy/driver.py), which
owns the protocol: it drops stale proposals, keeps the generated-token base
across failovers and routes a failed-over request with `Policy.reroute`.

Plain legs (`Forwarder.complete`): a client request that does not stream,
asks for at most `plain_max_new_tokens` and that the policy will not move
(`driver.may_move`) goes to its worker as one non-streaming request through
`WorkerHttp.post`: no stream to split and no queue, which is most of what
the router spends on a short request. Its answer (ids, text, meta_info) is
taken whole. If the connection breaks, the worker is ejected (or hangs) or
the worker aborts it, the request is routed again and starts afresh; the
router learns nothing before the answer (no TTFT, tokens counted at the end).

Migration (a proposal from `driver.progress` or `driver.tick` for this
request): a new leg is opened on the target with `input_ids` = prompt + ids
generated so far, `max_new_tokens` = what remains (and `min_new_tokens`
likewise), the other sampling parameters unchanged. Only once the target has
accepted is the source leg dropped and `POST /abort_request` sent to the
source; so a target that refuses costs nothing, the source just goes on.
Tokens the source generated after the cut are dropped: the target generates
them again from the same context. `driver.migration_accepted` confirms the
move, `driver.migration_refused` says it was not made.

Failover: if the worker's connection breaks (or it aborts the request
itself, e.g. on shutdown), the request is routed again with its current
length (`driver.failover`) and resumed the same way (reason "failover");
the worker is ejected by the pool until its health checks pass. When the pool ejects a worker for
failed health checks (hung, not dead), `fail_worker` resumes every request
running there the same way. After `MAX_FAILOVERS` resumes with no new token
in between the request ends with finish reason "abort".

Stop strings: a worker checks them over its own leg's output only, so for the
first tokens of each later leg the router checks the window the unmigrated
request would have seen, and finishes the request itself on a match.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import os
from collections.abc import AsyncIterator, Callable

import aiohttp

from l4_sglang.policy.base import Migration, NoWorkerAvailable, Policy, RequestInfo
from l4_sglang.policy.driver import PolicyDriver
from l4_sglang.router.generation import Generation, GenerationSpec
from l4_sglang.router.http1 import Exchange, WorkerConnectionError, WorkerHttp
from l4_sglang.router.legs import MAX_FAILOVERS, WAKE, Leg, LegFailed, Signal, WorkerRejected, error_message
from l4_sglang.router.metrics import RouterMetrics
from l4_sglang.router.migration import Migrations
from l4_sglang.router.plain_legs import PlainLegs
from l4_sglang.router.workers import WorkerPool
from l4_sglang.text.tokens import Tokenizer

log = logging.getLogger(__name__)

FINISHED_LEG_GRACE_S = 5.0
"""How long a finished leg's answer may take to end (SGLang sends `data: [DONE]` right after the
finishing chunk) before its connection is closed rather than left waiting for reuse."""


class Forwarder(PlainLegs, Migrations):
    def __init__(
        self,
        driver: PolicyDriver | Policy,
        pool: WorkerPool,
        tokenizer: Tokenizer,
        metrics: RouterMetrics,
        session: Callable[[], aiohttp.ClientSession],
        clock: Callable[[], float],
        *,
        connect_timeout: float = 10.0,
        headers: dict[str, str] | None = None,
        policy_clock: Callable[[], float] | None = None,
        plain_max_new_tokens: int = 0,
    ) -> None:
        self.driver = PolicyDriver.of(driver)
        self.pool = pool
        self.tokenizer = tokenizer
        self.metrics = metrics
        self._session = session
        self._clock = clock
        # The policy reasons in model seconds (real seconds / worker time scale); timestamps stay real.
        self._policy_clock = policy_clock or clock
        self._headers = {"Content-Type": "application/json", **(headers or {})}
        self.plain_max_new_tokens = plain_max_new_tokens
        self._http = WorkerHttp(headers, connect_timeout)
        self._streams_only: set[str] = set()
        """Workers that answered a plain request with an event stream: they get streamed legs."""
        self.jobs: dict[str, Generation] = {}
        self._aborts: set[asyncio.Task] = set()
        self._opening: dict[str, set[Exchange]] = {}
        """Per worker, the legs opening there that have no answer yet."""

    # ---- the public face -------------------------------------------------------

    def new(self, spec: GenerationSpec, arrival: float) -> Generation:
        return Generation(rid=os.urandom(16).hex(), spec=spec, arrival=arrival)  # as uuid4().hex, cheaper

    async def run(self, gen: Generation, routed: str | None = None) -> AsyncIterator[list[int]]:
        """Yields the ids each worker chunk adds (maybe none, e.g. on the finishing chunk).

        The first step routes and opens the first leg; it raises WorkerRejected
        or NoWorkerAvailable (nothing was generated, the caller answers 4xx/5xx).
        The caller must call `end(gen)` afterwards, whatever happened.
        `routed`: the worker `complete` already routed it to.
        """
        await self._start(gen, routed)
        while not gen.finished:
            leg = gen.leg
            assert leg is not None
            item = await leg.queue.get()
            if leg.paused:
                leg.caught_up()
            if gen.leg is not leg:
                continue  # a migration swapped legs while we waited
            if isinstance(item, Signal):
                if item is WAKE:
                    if gen.pending is not None:
                        await self._migrate(gen)
                    continue
                # A broken connection has ended the request on its worker; an ejected (maybe hung)
                # worker is asked to abort it, as is one whose stream merely ended unfinished.
                broken = item.error is not None
                await self._resume(gen, f"worker stream {item.name}", broken, abort=item.name != "broke")
                continue
            new = self._absorb(gen, leg, item)
            if new is None:
                continue
            yield new
            if gen.finished:
                return
            if gen.pending is not None:
                await self._migrate(gen)
        yield []  # finished by the router (abort, gave up): one last update to report it

    async def complete(self, gen: Generation) -> None:
        """Run `gen` to its end for a caller that wants only the result.

        Raises as `run`; the caller must call `end(gen)` afterwards. A request
        of at most `plain_max_new_tokens` new tokens that the policy will not
        move goes to its worker as one plain (non-streaming) request: no
        stream to parse and no reader task, the cheapest way through. Any
        other runs on streamed legs, as `run`.
        """
        routed = None
        if gen.spec.max_new_tokens <= self.plain_max_new_tokens:
            self._enter(gen)
            routed = self._route(gen)
            if routed not in self._streams_only and not self.driver.may_move(gen.rid):
                streamed = await self._run_plain(gen, routed)
                if streamed is None:
                    return
                routed = streamed
        updates = self.run(gen, routed)
        try:
            async for _ in updates:
                pass
        finally:
            await updates.aclose()

    def book(self, gen: Generation, again: bool = False) -> str:
        """Route `gen` for a caller that runs it itself (pass-through): the policy books it as any
        other request, so `end` must follow. `again`: the worker picked before could not be reached.
        Raises NoWorkerAvailable."""
        if not again:
            self._enter(gen)
        return self._route(gen)

    def report(self, gen: Generation, generated: int) -> None:
        """Tell the policy how many ids a request it booked has generated (its final count)."""
        if generated and gen.booked:
            self.metrics.generated_tokens += generated
            now = self._policy_clock()
            for m in self.driver.progress(gen.rid, generated, now):  # a pass-through never moves
                self.driver.migration_refused(m, now)

    def end(self, gen: Generation) -> None:
        """Release the request: finished ones are reported finished, others aborted on their worker."""
        self.jobs.pop(gen.rid, None)
        plain, gen.plain = gen.plain, None
        if plain is not None and not plain.answered:
            plain.exchange.close()
            self._send_abort(plain.worker, plain.rid)
        leg, gen.leg = gen.leg, None
        if leg is not None and not leg.finished:
            self._drop_leg(leg, abort=True)
        elif leg is not None and leg.exchange.answering:
            # A finished one reads to its end and its connection is reused; a worker that never
            # ends the answer would hold that connection (and the leg) for good.
            asyncio.get_running_loop().call_later(FINISHED_LEG_GRACE_S, leg.exchange.close)
        if not gen.booked:
            return
        gen.booked = False
        now = self._policy_clock()
        if gen.finished and gen.finish_reason.get("type") != "abort":
            self.driver.finish(gen.rid, now)
        else:  # the client left, or the router ended it (/abort_request, no worker to resume on)
            self.driver.abort(gen.rid, now)

    def dispatch(self, moves: list[Migration]) -> None:
        """Hand the driver's proposals (stale ones already dropped) to their requests' run loops;
        one a request cannot take now (finishing, between legs, a plain leg) is refused."""
        for m in moves:
            gen = self.jobs.get(m.rid)
            if gen is None or gen.finished or gen.pending is not None or gen.worker != m.source:
                self.driver.migration_refused(m, self._policy_clock())
                continue
            gen.pending = m
            if gen.leg is not None:
                gen.leg.queue.put_nowait(WAKE)

    def abort(self, gen: Generation, message: str) -> None:
        """End a request from outside (e.g. /abort_request): it finishes with reason abort."""
        if gen.finished:
            return
        gen.finish_reason = {"type": "abort", "message": message}
        if gen.leg is not None:
            gen.leg.queue.put_nowait(WAKE)
        elif gen.plain is not None and not gen.plain.answered:
            self._send_abort(gen.plain.worker, gen.plain.rid)  # it answers with what it has so far
        elif gen.on_abort is not None:
            gen.on_abort()

    def fail_worker(self, worker: str) -> None:
        """The pool ejected `worker`: resume every request whose current leg runs there, and give
        up on the legs still waiting for its answer (their requests are routed again)."""
        for opening in list(self._opening.get(worker, ())):
            opening.close()
        for gen in self.jobs.values():
            plain = gen.plain
            if plain is not None and plain.worker == worker and not plain.answered:
                plain.exchange.close()  # its `_run_plain` routes it again
            leg = gen.leg
            if leg is not None and leg.worker == worker and not gen.finished and not leg.finished:
                leg.queue.put_nowait(Signal("ejected", ConnectionError(f"worker {worker} was ejected")))

    async def close(self, abort_timeout: float = 2.0) -> None:
        """Send the aborts still pending (at most `abort_timeout` s), then close the connections."""
        if self._aborts:
            await asyncio.wait(list(self._aborts), timeout=abort_timeout)
        for task in self._aborts:
            task.cancel()
        for task in list(self._aborts):
            with contextlib.suppress(BaseException):
                await task
        self._http.close()

    # ---- legs -------------------------------------------------------------------

    def _info(self, gen: Generation) -> RequestInfo:
        spec = gen.spec
        return RequestInfo(gen.rid, len(spec.prompt_ids), spec.policy_max_new, spec.prefix_hashes)

    def _enter(self, gen: Generation) -> None:
        self.jobs[gen.rid] = gen
        self.metrics.prompt_tokens += len(gen.spec.prompt_ids)

    def _route(self, gen: Generation) -> str:
        """Route a new request, or again one whose worker failed before it generated anything."""
        now = self._policy_clock()
        try:
            if gen.booked:
                worker = self.driver.failover(gen.rid, len(gen.output_ids), now)
            else:
                worker = self.driver.arrive(self._info(gen), now)
        except ValueError as e:  # a configuration the fleet does not fit (e.g. too few workers)
            raise NoWorkerAvailable(f"the {self.driver.policy.NAME} policy cannot route: {e}") from None
        gen.booked = True
        if gen.first_sent is None:
            gen.first_sent = self._clock()
        return worker

    async def _start(self, gen: Generation, worker: str | None) -> None:
        if worker is None:
            self._enter(gen)
        tried: set[str] = set()
        while True:
            if worker is None:
                worker = self._route(gen)
            try:
                gen.leg = await self._open_leg(gen, worker)
                return
            except LegFailed as e:
                self.pool.report_failure(worker, str(e))
                tried.add(worker)
                if len(tried) >= MAX_FAILOVERS:
                    raise NoWorkerAvailable(f"no worker took the request ({e})") from None
                worker = None

    @staticmethod
    def _leg_body(gen: Generation, rid: str, stream: bool) -> bytes:
        """The worker request that continues `gen` from the ids it has."""
        spec = gen.spec
        done = len(gen.output_ids)
        params = dict(spec.sampling)
        params["max_new_tokens"] = spec.max_new_tokens - done
        if spec.min_new_tokens:
            params["min_new_tokens"] = max(spec.min_new_tokens - done, 0)
        body = {
            **spec.extra,
            "input_ids": spec.prompt_ids + gen.output_ids if done else spec.prompt_ids,
            "sampling_params": params,
            "stream": stream,
            "rid": rid,
        }
        return json.dumps(body, separators=(",", ":")).encode()

    async def _open_leg(self, gen: Generation, worker: str) -> Leg:
        rid = gen.rid if gen.legs == 0 else f"{gen.rid}-{gen.legs + 1}"
        leg = Leg(worker=worker, rid=rid)
        opening = self._opening.setdefault(worker, set())
        opening.add(leg.exchange)
        try:
            body = self._leg_body(gen, rid, stream=True)
            status, answer = await self._http.post_stream(worker, "/generate", body, leg.exchange, leg)
            if leg.exchange.closed:  # ejected as it answered: that stream is cut and tells the leg nothing
                raise WorkerConnectionError("the request was closed")
        except (OSError, TimeoutError) as e:
            if leg.exchange.closed:
                raise LegFailed(f"worker {worker} was ejected before it answered") from None
            raise LegFailed(f"{type(e).__name__}: {e}") from None
        finally:
            opening.discard(leg.exchange)
            if not opening and self._opening.get(worker) is opening:
                del self._opening[worker]
        if status != 200:
            if 400 <= status < 500:
                raise WorkerRejected(status, error_message(answer.decode("utf-8", "replace")))
            raise LegFailed(f"HTTP {status}")
        gen.legs += 1
        gen.workers.append(worker)
        self.metrics.on_leg(worker)
        return leg

    def _drop_leg(self, leg: Leg, abort: bool) -> None:
        leg.exchange.close()  # the worker sees its connection close
        if abort:
            self._send_abort(leg.worker, leg.rid)

    def _send_abort(self, worker: str, rid: str) -> None:
        task = asyncio.get_running_loop().create_task(self._abort_on(worker, rid))
        self._aborts.add(task)
        task.add_done_callback(self._aborts.discard)

    async def _abort_on(self, worker: str, rid: str) -> None:
        with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
            async with self._session().post(
                worker + "/abort_request",
                data=json.dumps({"rid": rid}).encode(),
                headers=self._headers,
                timeout=aiohttp.ClientTimeout(total=10),
            ) as resp:
                await resp.read()

    # ---- chunks -------------------------------------------------------------------

    def _absorb(self, gen: Generation, leg: Leg, payload: bytes) -> list[int] | None:
        """Take one worker chunk: new ids, finish, progress. None if it carried nothing new."""
        try:
            chunk = json.loads(payload)
        except ValueError:
            log.warning("unparsable chunk from %s", leg.worker)
            return None
        if not isinstance(chunk, dict):
            return None
        now = self._clock()
        if "error" in chunk and "output_ids" not in chunk:
            message = error_message(json.dumps(chunk))
            if not gen.output_ids and gen.legs == 1:
                raise WorkerRejected(400, message)
            gen.finish_reason = {"type": "abort", "message": message}
            gen.last_chunk = now
            return []
        out = chunk.get("output_ids") or []
        meta = chunk.get("meta_info") or {}
        if leg.incremental is None and out and leg.received:
            # Cumulative (SGLang's default) or only the new ids (--incremental-streaming-output)?
            # The first chunk reads the same either way; the second tells them apart.
            done = meta.get("completion_tokens")
            leg.incremental = done == leg.received + len(out) and done != len(out)
        new = out if leg.incremental else out[leg.received :]
        gen.last_chunk = now
        gen.meta = meta
        if new:
            if gen.first_token is None:
                gen.first_token = now
            gen.failovers = 0
            new = self._append(gen, leg, new)
        reason = meta.get("finish_reason")
        if reason is not None:
            leg.finished = True
        if reason is not None and not gen.finished:
            if reason.get("type") == "abort":
                # The worker gave up on it (shutdown, KV exhausted): resume elsewhere.
                leg.queue.put_nowait(Signal("aborted by the worker"))
                return new or None
            if reason.get("type") == "length":
                reason = {"type": "length", "length": gen.spec.max_new_tokens}
            gen.finish_reason = reason
        if new:
            self.metrics.generated_tokens += len(new)
            moves = self.driver.progress(gen.rid, len(gen.output_ids), self._policy_clock())
            if moves:
                self.dispatch(moves)
        elif not gen.finished:
            return None
        return new

    def _append(self, gen: Generation, leg: Leg, new: list[int]) -> list[int]:
        """Add a leg's new ids; on a later leg, finish on a stop string its worker could not see."""
        stop = gen.spec.stop
        start = leg.received
        leg.received += len(new)
        if not stop or gen.legs == 1:
            gen.output_ids.extend(new)
            return new
        longest = max(len(s) for s in stop)
        kept: list[int] = []
        for j, token in enumerate(new):
            gen.output_ids.append(token)
            kept.append(token)
            pos = start + j  # position in this leg
            total = len(gen.output_ids)
            if pos >= longest or total < gen.spec.min_new_tokens:
                continue
            tail = self.tokenizer.decode(gen.output_ids[-(longest + 1) :])
            for s in stop:
                if s in tail:
                    gen.finish_reason = {"type": "stop", "matched": s}
                    return kept
        return kept
