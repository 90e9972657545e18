"""The event loop of the simulator, and nothing else.

A heap of `(time, kind, seq, payload)`: events run in time order; events due at
the same time run in `Kind` order (worker losses before step ends before arrivals
before step starts before load polls before ticks), and events of one kind at one time in the
order they were pushed (`seq`). A handler gets `(now, payload)` and returns the
events it wants pushed (or None). vidur's lesson: the kind must be part of the
key, or same-time events run in creation order.
"""

from __future__ import annotations

import enum
import heapq
import math
from collections.abc import Callable, Iterable
from typing import Any


class Kind(enum.IntEnum):
    """Event kinds, in the order same-time events run."""

    WORKER_LOST = 0
    """An instance is lost (`Simulator.lose_worker`): a step it would end then never lands."""
    STEP_END = 1
    """An instance's step finished: its tokens are out, its KV is updated."""
    ARRIVAL = 2
    """A request arrives and is routed."""
    STEP_START = 3
    """An idle instance that received work plans its next step (after all same-time arrivals)."""
    LOAD = 4
    """A load poll: the policy gets every instance's snapshot."""
    TICK = 5
    """The policy's periodic tick."""


Event = tuple[float, Kind, Any]
Handler = Callable[[float, Any], Iterable[Event] | None]


class EventLoop:
    def __init__(self) -> None:
        self.now = 0.0
        self.handlers: dict[Kind, Handler] = {}
        self.processed = 0
        self._heap: list[tuple[float, int, int, Any]] = []
        self._seq = 0

    def __len__(self) -> int:
        return len(self._heap)

    def on(self, kind: Kind, handler: Handler) -> None:
        self.handlers[kind] = handler

    def push(self, time: float, kind: Kind, payload: Any = None) -> None:
        if not time >= self.now:  # also refuses NaN
            raise ValueError(f"invalid event time {time!r}: the clock is at {self.now!r}")
        self._seq += 1
        heapq.heappush(self._heap, (time, int(kind), self._seq, payload))

    def peek_time(self) -> float:
        """Time of the next event (inf when none is due)."""
        return self._heap[0][0] if self._heap else math.inf

    def run(self, until: float = math.inf) -> float:
        """Run every event due at or before `until`; returns the clock."""
        heap, handlers = self._heap, self.handlers
        while heap and heap[0][0] <= until:
            time, kind, _, payload = heapq.heappop(heap)
            self.now = time
            self.processed += 1
            out = handlers[kind](time, payload)  # IntEnum keys hash as ints
            if out:
                for t, k, p in out:
                    self.push(t, k, p)
        return self.now
