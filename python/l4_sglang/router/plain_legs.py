"""Plain legs: a short request the policy will not move, as one non-streaming worker request.

A mixin of `Forwarder` (forwarding.py), which calls `_run_plain` from
`complete`. The answer (ids, text, meta_info) is taken whole; if the
connection breaks, the worker is ejected (or hangs) or the worker aborts it,
the request is routed again and starts afresh.
"""

from __future__ import annotations

import json
from typing import TYPE_CHECKING

from l4_sglang.policy.base import NoWorkerAvailable
from l4_sglang.router.generation import Generation
from l4_sglang.router.legs import MAX_FAILOVERS, PlainLeg, WorkerRejected, error_message

if TYPE_CHECKING:
    from collections.abc import Callable

    from l4_sglang.policy.base import Migration
    from l4_sglang.policy.driver import PolicyDriver
    from l4_sglang.router.http1 import WorkerHttp
    from l4_sglang.router.metrics import RouterMetrics
    from l4_sglang.router.workers import WorkerPool

STREAMED = "answered with an event stream"
"""Why a plain attempt ended when its worker streams whatever it is asked."""


class PlainLegs:
    if TYPE_CHECKING:  # what it uses of Forwarder
        driver: PolicyDriver
        pool: WorkerPool
        metrics: RouterMetrics
        _clock: Callable[[], float]
        _policy_clock: Callable[[], float]
        _http: WorkerHttp
        _streams_only: set[str]

        def _route(self, gen: Generation) -> str: ...
        def _leg_body(self, gen: Generation, rid: str, stream: bool) -> bytes: ...
        def _send_abort(self, worker: str, rid: str) -> None: ...
        def dispatch(self, moves: list[Migration]) -> None: ...

    async def _run_plain(self, gen: Generation, worker: str) -> str | None:
        """One plain worker request; on a broken connection (or a worker-side abort) the request is
        routed again and starts afresh elsewhere, at most MAX_FAILOVERS times in all. Returns None,
        or a worker that answered with an event stream: the request goes on there on streamed legs."""
        attempt = 0
        while True:
            attempt += 1
            leg = gen.plain = PlainLeg(worker, gen.rid if attempt == 1 else f"{gen.rid}-{attempt}")
            why = await self._plain_attempt(gen, leg, last=attempt >= MAX_FAILOVERS)
            if why is STREAMED:
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
                raise WorkerRejected(status, error_message(answer.decode("utf-8", "replace")))
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
            return STREAMED
        if not isinstance(ids, list):
            why = "an answer without output_ids"
            if not gen.finished:
                if isinstance(out, dict) and "error" in out:
                    raise WorkerRejected(400, error_message(answer.decode("utf-8", "replace")))
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
