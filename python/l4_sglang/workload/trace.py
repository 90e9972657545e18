"""A replayable request trace: arrivals in seconds with prompt and output lengths.

A trace knows nothing of policies: whoever replays it (the simulator, the live
bench) turns its rows into the policy's `RequestInfo` itself.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Iterator
from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class TraceRequest:
    """One request of a trace."""

    arrival_s: float
    """Seconds since the start of the trace."""
    prompt_tokens: int
    output_tokens: int
    hash_ids: tuple[int, ...] = ()
    """Hashes of the prompt's leading blocks, the first one first (Mooncake: 512-token blocks)."""

    def __post_init__(self) -> None:
        if not (math.isfinite(self.arrival_s) and self.arrival_s >= 0):
            raise ValueError(f"invalid arrival_s: must be finite and >= 0, got {self.arrival_s!r}")
        for field in ("prompt_tokens", "output_tokens"):
            value = getattr(self, field)
            if not isinstance(value, (int, np.integer)) or isinstance(value, bool) or value < 0:
                raise ValueError(f"invalid {field}: must be an integer >= 0, got {value!r}")


class Trace:
    """Requests sorted by arrival (stably: equal arrivals keep their given order).

    `duration_s` is the span the trace covers, measured from time 0; it defaults to
    the last arrival and may not be shorter than it. The mean arrival rate is
    `len(trace) / duration_s`.
    """

    __slots__ = ("_requests", "duration_s", "name")

    def __init__(
        self, requests: Iterable[TraceRequest], name: str = "trace", duration_s: float | None = None
    ):
        reqs = sorted(requests, key=lambda r: r.arrival_s)
        last = reqs[-1].arrival_s if reqs else 0.0
        if duration_s is None:
            duration_s = last
        if not (math.isfinite(duration_s) and duration_s >= last):
            raise ValueError(
                f"invalid duration_s: must be finite and >= the last arrival {last}, got {duration_s!r}"
            )
        self._requests: tuple[TraceRequest, ...] = tuple(reqs)
        self.name = name
        self.duration_s = float(duration_s)

    def __len__(self) -> int:
        return len(self._requests)

    def __iter__(self) -> Iterator[TraceRequest]:
        return iter(self._requests)

    def __getitem__(self, i: int) -> TraceRequest:
        return self._requests[i]

    def __repr__(self) -> str:
        return f"Trace({self.name!r}, {len(self)} requests, {self.duration_s:.1f} s)"

    @property
    def requests(self) -> tuple[TraceRequest, ...]:
        return self._requests

    @property
    def mean_rate(self) -> float:
        """Requests per second over `duration_s` (0 for an empty or zero-length trace)."""
        return len(self) / self.duration_s if self.duration_s > 0 else 0.0

    def arrivals(self) -> np.ndarray:
        return np.array([r.arrival_s for r in self._requests], dtype=np.float64)

    def prompt_lengths(self) -> np.ndarray:
        return np.array([r.prompt_tokens for r in self._requests], dtype=np.int64)

    def output_lengths(self) -> np.ndarray:
        return np.array([r.output_tokens for r in self._requests], dtype=np.int64)
