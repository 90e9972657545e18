"""One request's life on the workers: route, stream, migrate, fail over, stitch.

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
from dataclasses import dataclass, field
from typing import Any

import aiohttp

from l4_sglang.policy.base import Migration, NoWorkerAvailable, Policy, RequestInfo
from l4_sglang.policy.driver import PREFIX_BLOCKS, PolicyDriver
from l4_sglang.router.http1 import Exchange, WorkerConnectionError, WorkerHttp
from l4_sglang.router.metrics import RouterMetrics
from l4_sglang.router.workers import WorkerPool
from l4_sglang.text.tokens import Tokenizer

log = logging.getLogger(__name__)

MAX_FAILOVERS = 3
"""Resumes in a row without a new token before a request is given up."""
PREFIX_BLOCK = 512
"""Tokens per prefix block hashed for `RequestInfo.prefix_hashes`."""
LEG_QUEUE_HIGH = 256
"""Worker chunks a leg holds unread before its connection stops reading..."""
LEG_QUEUE_LOW = 32
"""...and how few before it reads again."""
FINISHED_LEG_GRACE_S = 5.0
"""How long a finished leg's answer may take to end (SGLang sends `data: [DONE]` right after the
finishing chunk) before its connection is closed rather than left waiting for reuse."""


class WorkerRejected(Exception):
    """The worker refused the request (4xx, or an error event) before generating anything."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LegFailed(Exception):
    """A worker could not be reached or answered 5xx."""


@dataclass
class GenerationSpec:
    """What an API adapter asks for, in worker terms."""

    prompt_ids: list[int]
    max_new_tokens: int
    sampling: dict[str, Any] = field(default_factory=dict)
    """sampling_params for the worker, less max_new_tokens and min_new_tokens."""
    min_new_tokens: int = 0
    stop: tuple[str, ...] = ()
    policy_max_new: int | None = None
    """max_new_tokens as the policy hears it: None when the client gave none."""
    extra: dict[str, Any] = field(default_factory=dict)
    """Other top-level /generate fields sent on every leg (e.g. hash_ids)."""
    prefix_hashes: tuple[int, ...] = ()


def prefix_hashes(ids: list[int], hash_ids: list[int] | None = None) -> tuple[int, ...]:
    """Chained hashes of the first PREFIX_BLOCKS full blocks (the client's hash_ids if it gave them)."""
    if hash_ids:
        return tuple(int(h) for h in hash_ids[:PREFIX_BLOCKS])
    out, h = [], 0
    for i in range(min(len(ids) // PREFIX_BLOCK, PREFIX_BLOCKS)):
        h = hash((h, tuple(ids[i * PREFIX_BLOCK : (i + 1) * PREFIX_BLOCK])))
        out.append(h)
    return tuple(out)


class _Signal:
    def __init__(self, name: str, error: BaseException | None = None) -> None:
        self.name = name
        self.error = error


_WAKE = _Signal("wake")
_STREAMED = "answered with an event stream"


@dataclass(eq=False)
class Leg:
    """A streamed worker request; its connection feeds `queue` (as `http1.StreamEvents`)."""

    worker: str
    rid: str
    exchange: Exchange = field(default_factory=Exchange)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    received: int = 0
    """Ids this leg has delivered."""
    incremental: bool | None = None
    """The worker streams only new ids per chunk (SGLang --incremental-streaming-output)."""
    finished: bool = False
    """The worker sent this leg's finishing chunk."""
    paused: bool = False
    """The connection stopped reading: the queue was full (a slow client)."""

    def event(self, payload: bytes) -> None:
        self.queue.put_nowait(payload)
        if not self.paused and self.queue.qsize() >= LEG_QUEUE_HIGH:
            # A client that reads slower than its worker writes would make the router hold every
            # chunk (with cumulative ids, memory growing with the square of the output): stop
            # reading, so TCP pushes back on the worker, until the consumer has caught up.
            self.paused = self.exchange.pause_reading()

    def caught_up(self) -> None:
        if self.queue.qsize() <= LEG_QUEUE_LOW:
            self.paused = False
            self.exchange.resume_reading()

    def end(self, error: Exception | None) -> None:
        self.queue.put_nowait(_Signal("ended") if error is None else _Signal("broke", error))


@dataclass(eq=False, slots=True)
class PlainLeg:
    """A non-streaming worker request: the whole answer comes at once."""

    worker: str
    rid: str
    exchange: Exchange = field(default_factory=Exchange)
    answered: bool = False


@dataclass(eq=False)
class Generation:
    rid: str
    spec: GenerationSpec
    arrival: float
    output_ids: list[int] = field(default_factory=list)
    finish_reason: dict | None = None
    meta: dict = field(default_factory=dict)
    """The last meta_info a worker sent."""
    text: str | None = None
    """The worker's own text of the whole output, when one plain leg made all of it."""
    leg: Leg | None = None
    plain: PlainLeg | None = None
    """Set instead of `leg` while the request runs as one plain worker request."""
    legs: int = 0
    workers: list[str] = field(default_factory=list)
    """Worker of each leg, in order."""
    migrations: list[Migration] = field(default_factory=list)
    first_sent: float | None = None
    first_token: float | None = None
    last_chunk: float | None = None
    pending: Migration | None = None
    failovers: int = 0
    booked: bool = False
    on_abort: Callable[[], None] | None = None
    """How to stop it when it runs outside any leg (a pass-through: close its worker connection)."""

    @property
    def finished(self) -> bool:
        return self.finish_reason is not None

    @property
    def worker(self) -> str | None:
        return self.leg.worker if self.leg is not None else None

    @property
    def remaining(self) -> int:
        return max(self.spec.max_new_tokens - len(self.output_ids), 0)


class Forwarder:
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
            if isinstance(item, _Signal):
                if item is _WAKE:
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
                gen.leg.queue.put_nowait(_WAKE)

    def abort(self, gen: Generation, message: str) -> None:
        """End a request from outside (e.g. /abort_request): it finishes with reason abort."""
        if gen.finished:
            return
        gen.finish_reason = {"type": "abort", "message": message}
        if gen.leg is not None:
            gen.leg.queue.put_nowait(_WAKE)
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
                leg.queue.put_nowait(_Signal("ejected", ConnectionError(f"worker {worker} was ejected")))

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
                raise WorkerRejected(status, _error_message(answer.decode("utf-8", "replace")))
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

    # ---- plain legs ---------------------------------------------------------------

    async def _run_plain(self, gen: Generation, worker: str) -> str | None:
        """One plain worker request; on a broken connection (or a worker-side abort) the request is
        routed again and starts afresh elsewhere, at most MAX_FAILOVERS times in all. Returns None,
        or a worker that answered with an event stream: the request goes on there on streamed legs."""
        attempt = 0
        while True:
            attempt += 1
            leg = gen.plain = PlainLeg(worker, gen.rid if attempt == 1 else f"{gen.rid}-{attempt}")
            why = await self._plain_attempt(gen, leg, last=attempt >= MAX_FAILOVERS)
            if why is _STREAMED:
                gen.plain = None
                return worker
            if why is None or gen.finished:
                return None
            if attempt >= MAX_FAILOVERS:
                raise NoWorkerAvailable(f"no worker took the request ({why})")
            worker = self._route(gen)

    async def _plain_attempt(self, gen: Generation, leg: PlainLeg, last: bool) -> str | None:
        """Send one plain request and take its answer; None when done, else why to try again."""
        body = self._leg_body(gen, leg.rid, stream=False)
        try:
            status, answer = await self._http.post(leg.worker, "/generate", body, leg.exchange)
        except (OSError, TimeoutError) as e:
            why = f"{type(e).__name__}: {e}"
            if leg.exchange.closed:  # we gave up on it (ejected, maybe hung): it may still be running
                self._send_abort(leg.worker, leg.rid)
            elif not gen.finished:
                self.pool.report_failure(leg.worker, why)
            return why
        leg.answered = True
        if status == 200:
            return self._take_plain(gen, leg, answer, last)
        if not gen.finished:
            if 400 <= status < 500:
                raise WorkerRejected(status, _error_message(answer.decode("utf-8", "replace")))
            self.pool.report_failure(leg.worker, f"HTTP {status}")
        return f"HTTP {status}"

    def _take_plain(self, gen: Generation, leg: PlainLeg, answer: bytes, last: bool) -> str | None:
        try:
            out = json.loads(answer)
        except ValueError:
            out = None
        ids = out.get("output_ids") if isinstance(out, dict) else None
        if out is None and answer.lstrip().startswith(b"data:"):
            self._streams_only.add(leg.worker)  # it streams whatever it is asked
            return _STREAMED
        if not isinstance(ids, list):
            why = "an answer without output_ids"
            if not gen.finished:
                if isinstance(out, dict) and "error" in out:
                    raise WorkerRejected(400, _error_message(answer.decode("utf-8", "replace")))
                self.pool.report_failure(leg.worker, why)
            return why
        meta = out.get("meta_info")
        meta = meta if isinstance(meta, dict) else {}
        reason = meta.get("finish_reason")
        if not isinstance(reason, dict):
            reason = {"type": "abort", "message": "the worker's answer has no finish reason"}
        if reason.get("type") == "abort" and not gen.finished and not last:
            return "aborted by the worker"  # shutdown, KV exhausted: try another one
        gen.legs += 1
        gen.workers.append(leg.worker)
        self.metrics.on_leg(leg.worker)
        gen.output_ids = ids
        gen.meta = meta
        text = out.get("text")
        gen.text = text if isinstance(text, str) else None
        gen.last_chunk = self._clock()
        if not gen.finished:
            if reason.get("type") == "length":
                reason = {"type": "length", "length": gen.spec.max_new_tokens}
            gen.finish_reason = reason
        if ids:
            self.metrics.generated_tokens += len(ids)
            # It is done: `dispatch` refuses whatever move this report brings.
            self.dispatch(self.driver.progress(gen.rid, len(ids), self._policy_clock()))
        return None

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
            message = _error_message(json.dumps(chunk))
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
                leg.queue.put_nowait(_Signal("aborted by the worker"))
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

    # ---- moving -------------------------------------------------------------------

    async def _migrate(self, gen: Generation) -> None:
        m, gen.pending = gen.pending, None
        old = gen.leg
        if m is None:
            return
        if old is None or gen.finished:
            self.driver.migration_refused(m, self._policy_clock())
            return
        if m.source != old.worker or m.target == old.worker or m.target not in self.pool:
            self.metrics.on_failed_migration(m.reason)
            self.driver.migration_refused(m, self._policy_clock())
            return
        try:
            new = await self._open_leg(gen, m.target)
        except (LegFailed, WorkerRejected) as e:
            if isinstance(e, LegFailed):
                self.pool.report_failure(m.target, str(e))
            self.metrics.on_failed_migration(m.reason)
            self.driver.migration_refused(m, self._policy_clock())
            log.info("migration of %s to %s failed (%s); it stays on %s", gen.rid, m.target, e, old.worker)
            return
        if gen.finished:  # aborted from outside while the target was opening
            self._drop_leg(new, abort=True)
            self.driver.migration_refused(m, self._policy_clock())
            return
        gen.leg = new
        self._drop_leg(old, abort=True)
        gen.migrations.append(m)
        self.driver.migration_accepted(m, self._policy_clock())
        self.metrics.on_migration(m.reason)

    async def _resume(self, gen: Generation, why: str, broken: bool, abort: bool) -> None:
        """The current leg ended without finishing: route again and continue (reason failover)."""
        old = gen.leg
        assert old is not None
        if broken:
            self.pool.report_failure(old.worker, why)
        self._drop_leg(old, abort=abort)
        while True:
            gen.failovers += 1
            if gen.failovers > MAX_FAILOVERS:
                gen.finish_reason = {"type": "abort", "message": f"gave up after {MAX_FAILOVERS} failovers"}
                gen.leg = None
                return
            # Route it afresh at its current length (the driver counts progress from here).
            gen.pending = None
            try:
                target = self.driver.failover(gen.rid, len(gen.output_ids), self._policy_clock())
            except (NoWorkerAvailable, ValueError) as e:
                gen.finish_reason = {"type": "abort", "message": f"no healthy worker to resume on: {e}"}
                gen.leg = None
                return
            try:
                gen.leg = await self._open_leg(gen, target)
            except LegFailed as e:
                self.pool.report_failure(target, str(e))
                continue
            except WorkerRejected as e:
                gen.finish_reason = {"type": "abort", "message": e.message}
                gen.leg = None
                return
            m = Migration(gen.rid, old.worker, target, "failover")
            gen.migrations.append(m)
            self.driver.migration_accepted(m, self._policy_clock())
            self.metrics.on_migration("failover")
            log.info("request %s resumed on %s after %s", gen.rid, target, why)
            return


def _error_message(text: str) -> str:
    """The message of a worker's error body, whatever its shape."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "the worker refused the request"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return text.strip()[:500]
