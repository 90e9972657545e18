"""`PolicyDriver`: the one place where the driving protocol of a policy lives.

The HTTP router (sockets) and the simulator (events) are adapters over it:
they say what happened to a request or a worker, in their own terms, and
carry out what comes back. The driver holds the policy and, per request in
flight, what the protocol needs that a policy does not keep:

- where the request runs, so a migration proposal whose source is not that
  worker any more (or one for a request already moving, or gone) is dropped
  as stale before an adapter sees it;
- its generated-token base: `progress` takes every token generated for the
  request so far; after a failover the policy booked it afresh at its
  current length, so the driver reports only the tokens since then;
- the proposal an adapter is carrying out, until it says `migration_accepted`
  or `migration_refused` (the request is then free to be proposed again).

Stale is the driver's call; refused (the target is unknown, cannot hold the
request, or its leg failed to open) is the adapter's, which then says so.
A failover routes the request again through `Policy.reroute`, not `route`,
so a policy that learns from arrivals does not count it twice.

No I/O, no clock: every call carries `now` in the policy's seconds.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from l4_sglang.policy.base import LayoutView, Migration, Policy, RequestInfo, WorkerSnapshot

PREFIX_BLOCKS = 8
"""Leading prefix blocks the policy hears of (`RequestInfo.prefix_hashes`): affinity only needs
the first ones. The router hashes that many blocks of a prompt, the simulator keeps that many of a
trace row's hash ids."""


@dataclass(eq=False, slots=True)
class Tracked:
    """One request in flight, as the protocol sees it."""

    info: RequestInfo
    """As it arrived."""
    worker: str
    generated: int = 0
    """Tokens generated for it so far, across migrations and failovers (the last count reported)."""
    base: int = 0
    """Tokens of `generated` the policy's booking does not count: those before its last failover."""
    pending: Migration | None = None
    """The proposal an adapter was handed and has not settled yet."""


class PolicyDriver:
    def __init__(self, policy: Policy) -> None:
        self.policy = policy
        self.requests: dict[str, Tracked] = {}

    @classmethod
    def of(cls, driver_or_policy: PolicyDriver | Policy) -> PolicyDriver:
        """A driver as is, or a new one around a bare policy."""
        if isinstance(driver_or_policy, PolicyDriver):
            return driver_or_policy
        return cls(driver_or_policy)

    def __contains__(self, rid: str) -> bool:
        return rid in self.requests

    def worker_of(self, rid: str) -> str | None:
        t = self.requests.get(rid)
        return None if t is None else t.worker

    # ---- workers ------------------------------------------------------------------

    def worker_added(self, worker: str, now: float, snapshot: WorkerSnapshot | None = None) -> None:
        """A worker joins (or comes back healthy); with its first snapshot if there is one."""
        self.policy.add_worker(worker, now)
        if snapshot is not None:
            self.policy.on_load([snapshot], now)

    def worker_removed(self, worker: str, now: float) -> list[str]:
        """A worker left (removed, ejected, lost). Returns the requests that ran there, in
        arrival order: the adapter fails them over (`failover`) or ends them."""
        self.policy.remove_worker(worker, now)
        return [rid for rid, t in self.requests.items() if t.worker == worker]

    def loads(self, snapshots: Sequence[WorkerSnapshot], now: float) -> None:
        self.policy.on_load(snapshots, now)

    # ---- requests -----------------------------------------------------------------

    def arrive(self, info: RequestInfo, now: float) -> str:
        """Route a new request; raises what `Policy.route` raises (nothing is then tracked)."""
        if info.rid in self.requests:
            raise ValueError(f"request {info.rid!r} is already in flight: fail it over instead")
        worker = self.policy.route(info, now)
        self.requests[info.rid] = Tracked(info, worker)
        return worker

    def may_move(self, rid: str) -> bool:
        return self.policy.may_move(rid)

    def progress(self, rid: str, generated: int, now: float) -> list[Migration]:
        """`generated`: every token generated for `rid` so far. Returns the proposals to carry out."""
        t = self.requests.get(rid)
        if t is None:
            return []
        t.generated = int(generated)
        return self._claim(self.policy.on_progress(rid, t.generated - t.base, now))

    def finish(self, rid: str, now: float) -> None:
        self.requests.pop(rid, None)
        self.policy.on_finish(rid, now)

    def abort(self, rid: str, now: float) -> None:
        self.requests.pop(rid, None)
        self.policy.on_abort(rid, now)

    def failover(self, rid: str, generated: int, now: float) -> str:
        """Its worker is gone or gave up on it, `generated` tokens in: route it again at its current
        length (`Policy.reroute`); progress then counts from here. The adapter confirms the resume
        with `migration_accepted(Migration(rid, old, new, "failover"))`, or tries again. Raises what
        `reroute` raises (the request stays tracked where it was until it is aborted)."""
        t = self.requests[rid]
        t.pending = None  # a move from a worker it is leaving is moot
        g = int(generated)
        info = t.info
        max_new = None if info.max_new_tokens is None else max(info.max_new_tokens - g, 0)
        now_info = RequestInfo(rid, info.prompt_tokens + g, max_new, info.prefix_hashes)
        worker = self.policy.reroute(now_info, now)
        t.worker, t.generated, t.base = worker, g, g
        return worker

    # ---- migrations ---------------------------------------------------------------

    def tick(self, now: float) -> list[Migration]:
        return self._claim(self.policy.tick(now))

    def current(self, m: Migration) -> bool:
        """Whether `m` is still the request's move to carry out (not stale since it was handed out)."""
        t = self.requests.get(m.rid)
        return t is not None and t.pending is m and t.worker == m.source

    def migration_accepted(self, m: Migration, now: float) -> None:
        """The target took the request (a proposal, or a failover's resume)."""
        t = self.requests.get(m.rid)
        if t is not None:
            t.worker = m.target
            if t.pending is m:
                t.pending = None
        self.policy.on_migrated(m, now)

    def migration_refused(self, m: Migration, now: float) -> None:
        """The adapter did not carry `m` out; the request stays where it is.

        The policy is not told: its booking of the proposal lapses (`book.PROPOSAL_TIMEOUT_S`)."""
        t = self.requests.get(m.rid)
        if t is not None and t.pending is m:
            t.pending = None

    def _claim(self, moves: list[Migration]) -> list[Migration]:
        """Drop the stale proposals: request gone, not on the source, or already moving."""
        out = []
        for m in moves:
            t = self.requests.get(m.rid)
            if t is None or t.worker != m.source or t.pending is not None:
                continue
            t.pending = m
            out.append(m)
        return out

    # ---- views --------------------------------------------------------------------

    def layout(self) -> LayoutView | None:
        return self.policy.layout()
