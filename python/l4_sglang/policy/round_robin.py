"""round_robin: healthy workers in turn, in the order they were added."""

from __future__ import annotations

from l4_sglang.core import CostModel
from l4_sglang.policy.base import Policy, RequestInfo


class RoundRobin(Policy):
    NAME = "round_robin"

    def __init__(self, config: object | None, cost_model: CostModel, seed: int = 0):
        super().__init__(config, cost_model, seed)
        self._turn = 0

    def route(self, req: RequestInfo, now: float) -> str:
        workers = self.healthy_workers()
        worker = workers[self._turn % len(workers)]
        self._turn += 1
        self.book.route(req, worker, now)
        return worker
