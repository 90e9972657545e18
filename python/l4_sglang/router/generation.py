"""A request as the API adapters and the forwarder share it: what it asks for, what it got.

`native` and `openai` parse a client's request into a `GenerationSpec` and
build their answers from a `Generation`; `forwarding` runs it on the workers.
Neither side needs the other's module.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from l4_sglang.policy.base import Migration
from l4_sglang.policy.driver import PREFIX_BLOCKS

if TYPE_CHECKING:
    from l4_sglang.router.legs import Leg, PlainLeg

PREFIX_BLOCK = 512
"""Tokens per prefix block hashed for `RequestInfo.prefix_hashes`."""


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
