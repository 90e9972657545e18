"""power_of_two: sample two distinct healthy workers, take the less loaded.

Load = (outstanding requests, outstanding tokens), compared in that order
(running + waiting requests first, KV + queued prompt tokens to break ties);
a tie goes to the worker added first. Sampling uses a generator seeded with
the policy's seed.
"""

from __future__ import annotations

import random as _random

from l4_sglang.core import CostModel
from l4_sglang.policy.base import Policy, RequestInfo


class PowerOfTwo(Policy):
    NAME = "power_of_two"

    def __init__(self, config: object | None, cost_model: CostModel, seed: int = 0):
        super().__init__(config, cost_model, seed)
        self._rng = _random.Random(self.seed)

    def route(self, req: RequestInfo, now: float) -> str:
        workers = self.healthy_workers()
        if len(workers) == 1:
            worker = workers[0]
        else:
            a, b = sorted(self._rng.sample(range(len(workers)), 2))
            worker = min((workers[a], workers[b]), key=self.book.outstanding)
        self.book.route(req, worker, now)
        return worker
