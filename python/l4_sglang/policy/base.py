"""The policy interface: decisions over events and load snapshots pushed in.

A policy holds no sockets, threads or clocks: every event carries `now`
(seconds, any epoch, never decreasing), so the HTTP router and the
discrete-event simulator drive the same objects and a run replays exactly
from its seed and its event sequence.

The driver (`policy/driver.py`, the one the router and the simulator use)
tells a policy about workers (`add_worker`, `remove_worker`, `on_load`
snapshots), requests (`route`, `reroute` after a failover, `on_progress`,
`on_finish`, `on_abort`) and migrations it carried out (`on_migrated`), and
calls `tick` periodically. Decisions come back as return values: a worker id from
`route`, `Migration` proposals from `on_progress` and `tick`. A proposal is
only a proposal: the request stays booked on its source until the driver
confirms the move with `on_migrated`.

Every policy keeps a `LoadBook` (`policy/book.py`) of the requests it routed
and the last snapshot of each worker; the default hooks below keep that book
and decide nothing, so a policy overriding a hook calls `super()` first.
"""

from __future__ import annotations

import math
from abc import ABC, abstractmethod
from collections.abc import Sequence
from dataclasses import dataclass
from typing import ClassVar

from l4_sglang.core import CostModel
from l4_sglang.policy.book import LoadBook


class NoWorkerAvailable(RuntimeError):
    """No registered worker is healthy, so a request cannot be routed."""


@dataclass(frozen=True)
class WorkerSnapshot:
    """What one load poll of a worker reports (SGLang's /get_load and friends)."""

    worker_id: str
    running: int
    """Requests decoding now."""
    waiting: int
    """Requests queued for prefill."""
    kv_tokens: int
    """Sum of the running requests' contexts."""
    max_kv: int
    """The longest running context."""
    queued_tokens: int
    """Prompt tokens of the waiting requests."""
    max_total_tokens: int
    """KV capacity of the worker, in tokens (0 if unknown)."""
    mean_remaining: float = 0.0
    """Mean tokens the running requests still have to generate (0 if unknown)."""
    healthy: bool = True


@dataclass(frozen=True)
class RequestInfo:
    rid: str
    prompt_tokens: int
    max_new_tokens: int | None = None
    prefix_hashes: tuple[int, ...] = ()
    """Hashes of the prompt's leading blocks, the first one first (for prefix affinity)."""


@dataclass(frozen=True)
class Migration:
    """A proposal to move running request `rid` from worker `source` to `target`."""

    rid: str
    source: str
    target: str
    reason: str


@dataclass(frozen=True)
class StageView:
    lo_tokens: float
    hi_tokens: float
    """Upper bound of the stage's length range (`math.inf` for the last stage)."""
    workers: tuple[str, ...]


@dataclass(frozen=True)
class LayoutView:
    stages: tuple[StageView, ...]
    predicted_mean_e2e_s: float | None
    updated_at: float

    def stage_of(self, tokens: float) -> int:
        """Index of the stage whose range holds a length of `tokens`."""
        for i, s in enumerate(self.stages):
            if tokens < s.hi_tokens:
                return i
        return len(self.stages) - 1


@dataclass(frozen=True)
class PolicyConfig:
    """A policy without knobs. Each field of a subclass needs a default and
    `metadata={"help": ...}`; `registry.policy_config_fields` reads both."""


def check_config(config: object, rules: dict[str, tuple[str, bool]]) -> None:
    """Raise ValueError naming the first field of `config` whose rule fails.

    `rules` maps a field name to (description, ok) where `ok` is the result of
    the check; the description completes "invalid <field>: must be ...".
    """
    for field, (what, ok) in rules.items():
        if not ok:
            raise ValueError(f"invalid {field}: must be {what}, got {getattr(config, field)!r}")


def finite(x: float) -> bool:
    return isinstance(x, (int, float)) and math.isfinite(x)


class Policy(ABC):
    """One routing policy. Subclasses set `NAME` and `Config` and implement `route`."""

    NAME: ClassVar[str]
    Config: ClassVar[type] = PolicyConfig

    def __init__(self, config: object | None, cost_model: CostModel, seed: int = 0):
        config = self.Config() if config is None else config
        if not isinstance(config, self.Config):
            raise ValueError(
                f"invalid config: {type(self).__name__} needs a {self.Config.__name__}, "
                f"got {type(config).__name__}"
            )
        self.config = config
        self.cost_model = cost_model
        self.seed = int(seed)
        self.book = LoadBook(cost_model)

    def __repr__(self) -> str:
        return f"{type(self).__name__}({self.config!r}, seed={self.seed})"

    # The one required decision.
    @abstractmethod
    def route(self, req: RequestInfo, now: float) -> str:
        """The worker that takes `req`; raises NoWorkerAvailable when none is healthy.

        Implementations call `self.book.route(req, worker, now)` before returning.
        """

    def reroute(self, req: RequestInfo, now: float) -> str:
        """Route `req` again: its worker was lost or gave up on it (a failover).

        `req` is the request at its current length (prompt + generated so far,
        what remains of max_new_tokens), under the rid it arrived with; the
        booking is replaced (`book.route` forgets the old one), so the book
        counts it once. The default is `route`: a policy that learns from
        arrivals (a length histogram) overrides this to place the request
        without counting it as a new one.
        """
        return self.route(req, now)

    # Hooks: they keep the book and decide nothing.
    def add_worker(self, worker_id: str, now: float) -> None:
        self.book.add_worker(worker_id, now)

    def remove_worker(self, worker_id: str, now: float) -> None:
        self.book.remove_worker(worker_id)

    def on_load(self, snapshots: Sequence[WorkerSnapshot], now: float) -> None:
        self.book.apply_snapshots(snapshots, now)

    def on_progress(self, rid: str, generated_tokens: int, now: float) -> list[Migration]:
        """`generated_tokens` counts every token generated for `rid` so far,
        across migrations."""
        self.book.progress(rid, generated_tokens)
        return []

    def on_finish(self, rid: str, now: float) -> None:
        self.book.finish(rid)

    def on_abort(self, rid: str, now: float) -> None:
        self.book.finish(rid)

    def on_migrated(self, m: Migration, now: float) -> None:
        self.book.migrated(m)

    def tick(self, now: float) -> list[Migration]:
        self.book.expire_proposals(now)
        return []

    def layout(self) -> LayoutView | None:
        return None

    def may_move(self, rid: str) -> bool:
        """Whether the policy may ever propose moving `rid`, just routed.

        When it says no, the driver may run the request without progress
        reports (the router sends a short non-streaming request to its worker
        as one plain request, which costs it less): `on_progress` then comes
        once, with the final count, before `on_finish`. A policy that
        overrides neither `on_progress` nor `tick` never proposes a move;
        one that does answers for itself.
        """
        cls = type(self)
        return cls.on_progress is not Policy.on_progress or cls.tick is not Policy.tick

    # Helpers for subclasses.
    def healthy_workers(self) -> list[str]:
        """Healthy registered workers in the order they were added."""
        found = self.book.healthy_workers()
        if not found:
            raise NoWorkerAvailable(f"{self.NAME}: no healthy worker among {len(self.book.workers)}")
        return found

    def propose(self, rid: str, target: str, reason: str, now: float) -> Migration:
        """Book a migration proposal of `rid` to `target` and return it."""
        source = self.book.requests[rid].worker
        self.book.propose(rid, target, now)
        return Migration(rid=rid, source=source, target=target, reason=reason)
