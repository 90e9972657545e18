"""llumnix: load-based dispatch plus pairwise migration, after Llumnix (OSDI '24).

Load of a worker = (KV tokens + queued prompt tokens) / KV capacity (the
snapshot's `max_total_tokens`, else the cost model's capacity): Llumnix's
"virtual usage" without its priority headroom. A new request goes to the
least loaded healthy worker (ties: the one added first). `tick` sorts healthy
workers by load and pairs the i-th busiest with the i-th idlest; while a
pair's load gap exceeds `gap_threshold` it proposes moving the busiest one's
shortest-running request (fewest generated tokens; ties: the one placed last)
to the idlest, at most `max_migrations_per_tick` in all. Llumnix moves the
shortest because its KV is the cheapest to copy.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from l4_sglang.policy.base import Migration, Policy, PolicyConfig, RequestInfo, check_config, finite


@dataclass(frozen=True)
class LlumnixConfig(PolicyConfig):
    migration: bool = field(default=True, metadata={"help": "propose pairwise migrations in tick()"})
    gap_threshold: float = field(
        default=0.2,
        metadata={
            "help": "load gap (share of KV capacity) between two workers above which one request moves"
        },
    )
    max_migrations_per_tick: int = field(default=1, metadata={"help": "most migrations one tick() proposes"})

    def __post_init__(self):
        check_config(
            self,
            {
                "gap_threshold": ("finite and >= 0", finite(self.gap_threshold) and self.gap_threshold >= 0),
                "max_migrations_per_tick": (">= 0", self.max_migrations_per_tick >= 0),
            },
        )


class Llumnix(Policy):
    NAME = "llumnix"
    Config = LlumnixConfig
    config: LlumnixConfig

    def usage(self, worker_id: str) -> float:
        """Outstanding tokens as a share of the worker's KV capacity."""
        cap = self.book.capacity(worker_id)
        tokens = self.book.outstanding(worker_id)[1]
        return tokens / cap if cap > 0 else float(tokens)

    def route(self, req: RequestInfo, now: float) -> str:
        workers = self.healthy_workers()
        worker = min(workers, key=self.usage)
        self.book.route(req, worker, now)
        return worker

    def may_move(self, rid: str) -> bool:
        return self.config.migration

    def tick(self, now: float) -> list[Migration]:
        super().tick(now)
        if not self.config.migration:
            return []
        workers = self.book.healthy_workers()
        order = sorted(workers, key=self.usage)  # stable: ties keep the order of addition
        moves: list[Migration] = []
        for i in range(len(order) // 2):
            if len(moves) >= self.config.max_migrations_per_tick:
                break
            idle, busy = order[i], order[-1 - i]
            if self.usage(busy) - self.usage(idle) <= self.config.gap_threshold:
                break
            running = self.book.running(busy)
            if not running:
                continue
            # Fewest generated tokens; among equals the one placed last.
            shortest = min(reversed(running), key=lambda b: b.generated)
            moves.append(self.propose(shortest.rid, idle, "llumnix", now))
        return moves
