"""Runs the engine in real time on an asyncio loop.

Each iteration plans a step, sleeps until the step's deadline and applies it.
Deadlines chain: a step starts at the previous step's deadline, not at the
moment the loop got round to it, so timer jitter and Python overhead do not
add up over a stream (the mean step period equals the modelled step time). A
step starts "now" instead when the engine was idle, or when the loop has
fallen more than `MAX_CATCH_UP_S` behind, so a stalled process does not replay
a burst of back-to-back steps.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections import deque
from collections.abc import Callable
from dataclasses import dataclass

from l4_sglang.worker.engine import Engine, Request

MAX_CATCH_UP_S = 0.02
STEP_LOG_SIZE = 4096

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class StepRecord:
    kind: str
    batch_size: int
    new_tokens: int
    max_context: int
    cost_s: float  # modelled GPU time (unscaled)
    start: float  # loop time the step started (its deadline = start + cost_s * time_scale)
    deadline: float
    applied: float  # loop time it was applied (>= deadline; the difference is lag)

    def to_json(self) -> dict:
        return {
            "kind": self.kind,
            "batch_size": self.batch_size,
            "new_tokens": self.new_tokens,
            "max_context": self.max_context,
            "cost_s": self.cost_s,
            "start": self.start,
            "deadline": self.deadline,
            "applied": self.applied,
        }


class EngineRunner:
    def __init__(
        self,
        engine: Engine,
        time_scale: float = 1.0,
        request_overhead_s: float = 0.0,
        host_latency_s: float = 0.0,
    ) -> None:
        if not time_scale > 0:
            raise ValueError(f"invalid time_scale: must be > 0, got {time_scale}")
        if not request_overhead_s >= 0:
            raise ValueError(f"invalid request_overhead_s: must be >= 0, got {request_overhead_s}")
        if not host_latency_s >= 0:
            raise ValueError(f"invalid host_latency_s: must be >= 0, got {host_latency_s}")
        self.engine = engine
        self.time_scale = time_scale
        # Host-side latency before a request reaches the scheduler (the cost model's request_overhead_s).
        # The fitted overhead is a real server's whole HTTP path; this process's own path (measured,
        # host_latency_s) already adds part of it, so only the rest is waited out.
        self.request_delay_s = max(0.0, request_overhead_s * time_scale - host_latency_s)
        self._pending: dict[str, tuple[asyncio.TimerHandle, Request]] = {}
        self.step_log: deque[StepRecord] = deque(maxlen=STEP_LOG_SIZE)
        # Real time the engine spent stepping: modelled (cost x scale) and lost to falling behind.
        self.modelled_s = 0.0
        self.lost_s = 0.0
        self.on_step: Callable[[StepRecord], None] | None = None
        self.on_update: Callable[[Request, float], None] | None = None
        self._waiters: dict[str, asyncio.Event] = {}
        self._wake = asyncio.Event()
        self._task: asyncio.Task | None = None
        self._loop = asyncio.get_running_loop()
        engine.on_update = self._notify

    def now(self) -> float:
        return self._loop.time()

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="l4-emulated-engine")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    def submit(self, req: Request) -> asyncio.Event:
        """Queue `req` (after the request delay); the returned event is set on each update of it
        (clear it after reading). Invalid requests raise here, before any delay."""
        arrival = self.now()
        if req.rid in self._pending:
            raise ValueError(f"Duplicate request ID: {req.rid}")
        self.engine.check(req)
        req.arrival_time = arrival
        event = asyncio.Event()
        self._waiters[req.rid] = event
        if self.request_delay_s > 0:
            self._pending[req.rid] = (self._loop.call_later(self.request_delay_s, self._enqueue, req), req)
        else:
            self._enqueue(req)
        return event

    def _enqueue(self, req: Request) -> None:
        self._pending.pop(req.rid, None)
        self.engine.add(req, self.now())
        self._wake.set()

    def _drop_pending(self, rid: str, message: str) -> bool:
        """Abort a request still in its delay: queue it now and abort it at once, so it
        ends through the engine's one abort path."""
        entry = self._pending.pop(rid, None)
        if entry is None:
            return False
        handle, req = entry
        handle.cancel()
        self.engine.add(req, self.now())
        self.engine.abort(rid, self.now(), message)
        return True

    def abort(self, rid: str, message: str = "Abort by /abort_request") -> bool:
        if self._drop_pending(rid, message):
            return True
        return self.engine.abort(rid, self.now(), message) is not None

    def abort_all(self, message: str = "Abort by /abort_request") -> int:
        dropped = sum(self._drop_pending(rid, message) for rid in list(self._pending))
        return dropped + len(self.engine.abort_all(self.now(), message))

    def _notify(self, req: Request, now: float) -> None:
        if self.on_update is not None:
            self.on_update(req, now)
        event = self._waiters.get(req.rid)
        if event is not None:
            event.set()
            if req.finished:
                del self._waiters[req.rid]

    async def _run(self) -> None:
        while True:
            try:
                await self._steps()
            except asyncio.CancelledError:
                raise
            except Exception:
                # A bug must not leave every stream hanging: fail what is in flight, keep serving.
                log.exception("emulated engine step failed; aborting the requests in flight")
                self.abort_all("Internal error in the emulated engine")

    async def _steps(self) -> None:
        engine = self.engine
        prev_deadline: float | None = None
        while True:
            now = self.now()
            if prev_deadline is not None and now - prev_deadline > MAX_CATCH_UP_S:
                self.lost_s += now - prev_deadline  # busy but late: this time is not caught up
                prev_deadline = None
            start = now if prev_deadline is None else prev_deadline
            step = engine.plan(start)
            if step is None:
                prev_deadline = None
                self._wake.clear()
                await self._wake.wait()
                continue
            deadline = start + step.cost_s * self.time_scale
            self.modelled_s += step.cost_s * self.time_scale
            # Sleep even when late, so HTTP handlers get the loop between steps.
            await asyncio.sleep(max(deadline - self.now(), 0.0))
            applied = self.now()
            engine.apply(step, applied)
            record = StepRecord(
                kind=step.kind,
                batch_size=len(step.items),
                new_tokens=sum(n for _, n, _ in step.items),
                max_context=max(ctx + n for _, n, ctx in step.items),
                cost_s=step.cost_s,
                start=start,
                deadline=deadline,
                applied=applied,
            )
            self.step_log.append(record)
            if self.on_step is not None:
                self.on_step(record)
            prev_deadline = deadline
