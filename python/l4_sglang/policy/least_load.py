"""least_load: the worker with the fewest outstanding tokens (smg's token work).

Outstanding tokens of a worker = KV tokens of its running requests + prompt
tokens waiting for prefill, from its last snapshot plus what this policy
routed, finished and migrated since (`LoadBook.load`). Ties go to fewer
outstanding requests, then to the worker added first. Tokens rather than the
cost model's predicted work: this is the length-blind baseline as SGLang's
gateway has it.
"""

from __future__ import annotations

from l4_sglang.policy.base import Policy, RequestInfo


class LeastLoad(Policy):
    NAME = "least_load"

    def route(self, req: RequestInfo, now: float) -> str:
        workers = self.healthy_workers()
        worker = min(workers, key=lambda w: self.book.outstanding(w)[::-1])
        self.book.route(req, worker, now)
        return worker
