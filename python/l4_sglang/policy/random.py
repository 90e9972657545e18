"""random: a healthy worker drawn uniformly by a generator seeded with the policy's seed."""

from __future__ import annotations

import random as _random

from l4_sglang.core import CostModel
from l4_sglang.policy.base import Policy, RequestInfo


class Random(Policy):
    NAME = "random"

    def __init__(self, config: object | None, cost_model: CostModel, seed: int = 0):
        super().__init__(config, cost_model, seed)
        self._rng = _random.Random(self.seed)

    def route(self, req: RequestInfo, now: float) -> str:
        workers = self.healthy_workers()
        worker = workers[self._rng.randrange(len(workers))]
        self.book.route(req, worker, now)
        return worker
