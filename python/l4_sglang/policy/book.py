"""A policy's own book of which request runs where, and what each worker carries.

The estimate of a worker's load is its last snapshot plus what the book saw
happen to that worker since (smg keeps the same kind of in-flight count):
requests routed or migrated to it wait for prefill until their first progress
report, then decode; requests that finish, abort or migrate away leave it.
Without any snapshot the estimate is the book alone, so a policy driven by a
simulator that never polls still sees its own load. Migration proposals not
yet confirmed count on their target as queued work, so a burst of proposals
does not pile onto one worker.

Request ids are mapped to non-negative ints (`Booking.iid`, in order of
arrival) for the Rust core.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from l4_sglang.core import CostModel, InstanceLoad

if TYPE_CHECKING:
    from l4_sglang.policy.base import Migration, RequestInfo, WorkerSnapshot

DEFAULT_REMAINING_TOKENS = 256
"""Remaining tokens assumed for a request with no max_new_tokens, before any
better estimate: max(generated so far, this)."""

PROPOSAL_TIMEOUT_S = 10.0
"""A migration proposal not confirmed within this many seconds (of `now`) is
dropped, and the request may be proposed again."""


@dataclass(eq=False)
class Booking:
    """One request as the book knows it (mutable, owned by the book)."""

    rid: str
    iid: int
    info: RequestInfo
    worker: str
    routed_at: float
    generated: int = 0
    placed_generated: int = 0
    """`generated` when it was placed on its current worker."""
    queued_tokens: int = 0
    """Tokens its current worker prefills before it starts decoding there."""
    started: bool = False
    """Decoding on its current worker (a progress report came after placement)."""
    target: str | None = None
    """Target of a migration proposal awaiting confirmation."""
    proposed_at: float = 0.0
    examined_at: float = -math.inf
    """When the policy last weighed moving it (the policy's to use)."""

    @property
    def prompt(self) -> int:
        return self.info.prompt_tokens

    @property
    def context(self) -> int:
        return self.info.prompt_tokens + self.generated


@dataclass(eq=False)
class WorkerEntry:
    worker_id: str
    added_at: float
    snapshot: WorkerSnapshot | None = None
    healthy: bool = True
    # Changes since the snapshot.
    d_running: int = 0
    d_waiting: int = 0
    d_kv: int = 0
    d_queued: int = 0
    lost_max: bool = False
    """The snapshot's longest request may have left since."""
    requests: dict[str, Booking] = field(default_factory=dict)
    """The book's requests placed here, in placement order."""
    inbound: dict[str, int] = field(default_factory=dict)
    """Proposed migrations to here: rid -> context."""
    _max_ctx: int = 0
    _max_stale: bool = False

    def book_max_context(self) -> int:
        if self._max_stale:
            self._max_ctx = max((b.context for b in self.requests.values() if b.started), default=0)
            self._max_stale = False
        return self._max_ctx


def default_remaining(b: Booking) -> float:
    if b.info.max_new_tokens is not None:
        return float(max(b.info.max_new_tokens - b.generated, 0))
    return float(max(b.generated, DEFAULT_REMAINING_TOKENS))


class LoadBook:
    def __init__(self, cost_model: CostModel):
        self.workers: dict[str, WorkerEntry] = {}
        self.requests: dict[str, Booking] = {}
        self.by_iid: dict[int, Booking] = {}
        self.remaining: Callable[[Booking], float] = default_remaining
        """Estimate of a booking's remaining tokens; a policy may replace it."""
        self._next_iid = 0
        self._proposed: dict[str, None] = {}
        self._kv_capacity = float(cost_model.params.get("kv_capacity_tokens", 0.0))

    # Workers.
    def add_worker(self, worker_id: str, now: float) -> bool:
        """Register a worker; False if it was already there."""
        if worker_id in self.workers:
            return False
        self.workers[worker_id] = WorkerEntry(worker_id, float(now))
        return True

    def remove_worker(self, worker_id: str) -> bool:
        """Forget a worker; its bookings stay until they finish or migrate."""
        entry = self.workers.pop(worker_id, None)
        if entry is None:
            return False
        for rid in list(entry.inbound):
            self._unpropose(self.requests[rid])
        return True

    def apply_snapshots(self, snapshots: Sequence[WorkerSnapshot], now: float) -> None:
        """Take fresh snapshots; snapshots of unregistered workers are ignored."""
        for s in snapshots:
            e = self.workers.get(s.worker_id)
            if e is None:
                continue
            e.snapshot = s
            e.healthy = bool(s.healthy)
            e.d_running = e.d_waiting = e.d_kv = e.d_queued = 0
            e.lost_max = False

    def healthy_workers(self) -> list[str]:
        return [w for w, e in self.workers.items() if e.healthy]

    def is_healthy(self, worker_id: str) -> bool:
        e = self.workers.get(worker_id)
        return e is not None and e.healthy

    # Requests.
    def route(self, req: RequestInfo, worker_id: str, now: float) -> Booking:
        """Book `req` on `worker_id` (a rid routed again is first forgotten)."""
        if req.rid in self.requests:
            self.finish(req.rid)
        b = Booking(rid=req.rid, iid=self._next_iid, info=req, worker=worker_id, routed_at=float(now))
        self._next_iid += 1
        self.requests[req.rid] = b
        self.by_iid[b.iid] = b
        self._place(b, worker_id, req.prompt_tokens)
        return b

    def progress(self, rid: str, generated: int) -> tuple[Booking, int] | None:
        """Record progress; returns the booking and its previous count, or None if unknown."""
        b = self.requests.get(rid)
        if b is None:
            return None
        prev = b.generated
        g = max(int(generated), prev)
        e = self.workers.get(b.worker)
        if not b.started and g > b.placed_generated:
            b.generated = g
            b.started = True
            if e is not None:
                e.d_waiting -= 1
                e.d_queued -= b.queued_tokens
                e.d_running += 1
                e.d_kv += b.context
        else:
            b.generated = g
            if e is not None and b.started:
                e.d_kv += g - prev
        if e is not None and b.started and b.context > e._max_ctx and not e._max_stale:
            e._max_ctx = b.context
        return b, prev

    def finish(self, rid: str) -> Booking | None:
        b = self.requests.pop(rid, None)
        if b is None:
            return None
        self.by_iid.pop(b.iid, None)
        self._unplace(b)
        return b

    def migrated(self, m: Migration) -> Booking | None:
        """The driver moved `m.rid` to `m.target`: it recomputes its context there."""
        b = self.requests.get(m.rid)
        if b is None or b.worker == m.target:
            if b is not None:
                self._unpropose(b)
            return b
        self._unplace(b)
        self._place(b, m.target, b.context)
        return b

    def propose(self, rid: str, target: str, now: float) -> None:
        b = self.requests[rid]
        self._unpropose(b)
        b.target = target
        b.proposed_at = float(now)
        self._proposed[rid] = None
        e = self.workers.get(target)
        if e is not None:
            e.inbound[rid] = b.context

    def expire_proposals(self, now: float) -> None:
        for rid in list(self._proposed):
            b = self.requests[rid]
            if now - b.proposed_at > PROPOSAL_TIMEOUT_S:
                self._unpropose(b)

    def _place(self, b: Booking, worker_id: str, queued_tokens: int) -> None:
        b.worker = worker_id
        b.started = False
        b.placed_generated = b.generated
        b.queued_tokens = int(queued_tokens)
        e = self.workers.get(worker_id)
        if e is not None:
            e.requests[b.rid] = b
            e.d_waiting += 1
            e.d_queued += b.queued_tokens

    def _unplace(self, b: Booking) -> None:
        self._unpropose(b)
        e = self.workers.get(b.worker)
        if e is None or e.requests.pop(b.rid, None) is None:
            return
        if b.started:
            e.d_running -= 1
            e.d_kv -= b.context
            if e.snapshot is not None and b.context >= e.snapshot.max_kv:
                e.lost_max = True
            if b.context >= e._max_ctx:
                e._max_stale = True
        else:
            e.d_waiting -= 1
            e.d_queued -= b.queued_tokens

    def _unpropose(self, b: Booking) -> None:
        if b.target is None:
            return
        e = self.workers.get(b.target)
        if e is not None:
            e.inbound.pop(b.rid, None)
        b.target = None
        self._proposed.pop(b.rid, None)

    # Estimates.
    def running(self, worker_id: str) -> list[Booking]:
        """The book's requests decoding on a worker with no proposal pending, in placement order."""
        e = self.workers[worker_id]
        return [b for b in e.requests.values() if b.started and b.target is None]

    def load(self, worker_id: str, with_remaining: bool = False) -> InstanceLoad:
        """Snapshot + changes since it (+ pending inbound proposals as queued work).

        `mean_remaining` is the snapshot's when it reports one, else (only
        with `with_remaining`) the mean of `self.remaining` over the book's
        running requests there, else 0.
        """
        e = self.workers[worker_id]
        s = e.snapshot
        running = (s.running if s else 0) + e.d_running
        waiting = (s.waiting if s else 0) + e.d_waiting + len(e.inbound)
        kv = (s.kv_tokens if s else 0) + e.d_kv
        queued = (s.queued_tokens if s else 0) + e.d_queued + sum(e.inbound.values())
        running, waiting, kv, queued = max(running, 0), max(waiting, 0), max(kv, 0), max(queued, 0)
        snap_max = s.max_kv if s is not None and not e.lost_max else 0
        max_kv = float(max(snap_max, e.book_max_context()))
        max_kv = min(max(max_kv, kv / running), float(kv)) if running > 0 else 0.0
        mean_remaining = 0.0
        if s is not None and s.mean_remaining > 0:
            mean_remaining = float(s.mean_remaining)
        elif with_remaining:
            rem = [self.remaining(b) for b in e.requests.values() if b.started]
            mean_remaining = sum(rem) / len(rem) if rem else 0.0
        return InstanceLoad(
            running=float(running),
            kv_tokens=float(kv),
            max_kv=max_kv,
            queued_requests=float(waiting),
            queued_tokens=float(queued),
            mean_remaining=mean_remaining,
        )

    def outstanding(self, worker_id: str) -> tuple[int, int]:
        """(requests, tokens) outstanding: running + waiting, KV + queued prompt tokens."""
        e = self.workers[worker_id]
        s = e.snapshot
        running = max((s.running if s else 0) + e.d_running, 0)
        waiting = max((s.waiting if s else 0) + e.d_waiting + len(e.inbound), 0)
        kv = max((s.kv_tokens if s else 0) + e.d_kv, 0)
        queued = max((s.queued_tokens if s else 0) + e.d_queued + sum(e.inbound.values()), 0)
        return running + waiting, kv + queued

    def capacity(self, worker_id: str) -> float:
        """KV capacity in tokens: the snapshot's, else the cost model's."""
        s = self.workers[worker_id].snapshot
        if s is not None and s.max_total_tokens > 0:
            return float(s.max_total_tokens)
        return self._kv_capacity
