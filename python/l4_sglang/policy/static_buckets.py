"""static_buckets: fixed length ranges, each served by a fixed group of workers.

`boundaries` (b1 < b2 < ...) cut prompt lengths into len(boundaries) + 1
buckets [0, b1), [b1, b2), ..., [b_last, inf). Registered workers, in the
order they were added, split into one contiguous group per bucket: of the
sizes `instances` gives (one count per bucket, summing to the workers), else
as evenly as possible (the lower buckets get the extra workers). A request goes to the
bucket of its prompt length, and inside it to the worker with the fewest
outstanding tokens (as least_load). If no worker of its bucket is healthy it
goes to the nearest bucket that has one (the upper one on a tie). Requests
never migrate. Routing with fewer registered workers than buckets is a
configuration error (ValueError).
"""

from __future__ import annotations

import math
from bisect import bisect_right
from dataclasses import dataclass, field
from itertools import pairwise

from l4_sglang.policy.base import LayoutView, Policy, PolicyConfig, RequestInfo, StageView


@dataclass(frozen=True)
class StaticBucketsConfig(PolicyConfig):
    boundaries: tuple[int, ...] = field(
        default=(8192,),
        metadata={"help": "prompt-length boundaries between buckets, increasing (comma-separated)"},
    )
    instances: tuple[int, ...] = field(
        default=(),
        metadata={
            "help": "workers per bucket, one count per bucket summing to the workers (comma-separated; "
            "default: an even split)"
        },
    )

    def __post_init__(self):
        b = self.boundaries
        ok = (
            isinstance(b, tuple)
            and len(b) >= 1
            and all(isinstance(x, int) and not isinstance(x, bool) and x > 0 for x in b)
            and all(x < y for x, y in pairwise(b))
        )
        if not ok:
            raise ValueError(f"invalid boundaries: must be increasing positive integers, got {b!r}")
        n = self.instances
        if n and (len(n) != len(b) + 1 or any(not isinstance(x, int) or x < 1 for x in n)):
            raise ValueError(
                f"invalid instances: {len(b) + 1} buckets need {len(b) + 1} counts >= 1, got {n!r}"
            )


class StaticBuckets(Policy):
    NAME = "static_buckets"
    Config = StaticBucketsConfig
    config: StaticBucketsConfig

    def groups(self) -> list[list[str]]:
        """Registered workers split into one contiguous group per bucket."""
        workers = list(self.book.workers)
        k = len(self.config.boundaries) + 1
        if len(workers) < k:
            raise ValueError(
                f"invalid boundaries: {k} buckets need at least {k} workers, have {len(workers)}"
            )
        sizes = self.config.instances
        if sizes and sum(sizes) != len(workers):
            raise ValueError(
                f"invalid instances: {'+'.join(map(str, sizes))} = {sum(sizes)} workers per bucket, "
                f"have {len(workers)}"
            )
        if not sizes:
            size, extra = divmod(len(workers), k)
            sizes = tuple(size + (1 if i < extra else 0) for i in range(k))
        out, start = [], 0
        for n in sizes:
            out.append(workers[start : start + n])
            start += n
        return out

    def route(self, req: RequestInfo, now: float) -> str:
        self.healthy_workers()  # NoWorkerAvailable first
        groups = self.groups()
        home = bisect_right(self.config.boundaries, req.prompt_tokens)
        # Nearest bucket with a healthy worker; the upper one on a tie.
        for bucket in sorted(range(len(groups)), key=lambda i: (abs(i - home), -i)):
            healthy = [w for w in groups[bucket] if self.book.is_healthy(w)]
            if healthy:
                worker = min(healthy, key=lambda w: self.book.outstanding(w)[::-1])
                self.book.route(req, worker, now)
                return worker
        raise AssertionError("unreachable: a healthy worker exists")

    def layout(self) -> LayoutView | None:
        try:
            groups = self.groups()
        except ValueError:
            return None
        edges = (0, *self.config.boundaries, math.inf)
        stages = tuple(
            StageView(float(edges[i]), float(edges[i + 1]), tuple(g)) for i, g in enumerate(groups)
        )
        return LayoutView(stages=stages, predicted_mean_e2e_s=None, updated_at=0.0)
