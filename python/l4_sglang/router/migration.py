"""Moving a running request: a migration the policy proposed, or a failover off a broken worker.

A mixin of `Forwarder` (forwarding.py), whose run loop calls `_migrate` for a
pending proposal and `_resume` when a leg ends unfinished. A new leg is opened
on the target from the ids generated so far; only once it accepted is the old
one dropped and aborted.
"""

from __future__ import annotations

import logging
from typing import TYPE_CHECKING

from l4_sglang.policy.base import Migration, NoWorkerAvailable
from l4_sglang.router.generation import Generation
from l4_sglang.router.legs import MAX_FAILOVERS, LegFailed, WorkerRejected

if TYPE_CHECKING:
    from collections.abc import Callable

    from l4_sglang.policy.driver import PolicyDriver
    from l4_sglang.router.legs import Leg
    from l4_sglang.router.metrics import RouterMetrics
    from l4_sglang.router.workers import WorkerPool

log = logging.getLogger("l4_sglang.router.forwarding")


class Migrations:
    if TYPE_CHECKING:  # what it uses of Forwarder
        driver: PolicyDriver
        pool: WorkerPool
        metrics: RouterMetrics
        _policy_clock: Callable[[], float]

        async def _open_leg(self, gen: Generation, worker: str) -> Leg: ...
        def _drop_leg(self, leg: Leg, abort: bool) -> None: ...

    async def _migrate(self, gen: Generation) -> None:
        m, gen.pending = gen.pending, None
        old = gen.leg
        if m is None:
            return
        if old is None or gen.finished:
            self.driver.migration_refused(m, self._policy_clock())
            return
        if m.source != old.worker or m.target == old.worker or m.target not in self.pool:
            self.metrics.on_failed_migration(m.reason)
            self.driver.migration_refused(m, self._policy_clock())
            return
        try:
            new = await self._open_leg(gen, m.target)
        except (LegFailed, WorkerRejected) as e:
            if isinstance(e, LegFailed):
                self.pool.report_failure(m.target, str(e))
            self.metrics.on_failed_migration(m.reason)
            self.driver.migration_refused(m, self._policy_clock())
            log.info("migration of %s to %s failed (%s); it stays on %s", gen.rid, m.target, e, old.worker)
            return
        if gen.finished:  # aborted from outside while the target was opening
            self._drop_leg(new, abort=True)
            self.driver.migration_refused(m, self._policy_clock())
            return
        gen.leg = new
        self._drop_leg(old, abort=True)
        gen.migrations.append(m)
        self.driver.migration_accepted(m, self._policy_clock())
        self.metrics.on_migration(m.reason)

    async def _resume(self, gen: Generation, why: str, broken: bool, abort: bool) -> None:
        """The current leg ended without finishing: route again and continue (reason failover)."""
        old = gen.leg
        assert old is not None
        if broken:
            self.pool.report_failure(old.worker, why)
        self._drop_leg(old, abort=abort)
        while True:
            gen.failovers += 1
            if gen.failovers > MAX_FAILOVERS:
                gen.finish_reason = {"type": "abort", "message": f"gave up after {MAX_FAILOVERS} failovers"}
                gen.leg = None
                return
            # Route it afresh at its current length (the driver counts progress from here).
            gen.pending = None
            try:
                target = self.driver.failover(gen.rid, len(gen.output_ids), self._policy_clock())
            except (NoWorkerAvailable, ValueError) as e:
                gen.finish_reason = {"type": "abort", "message": f"no healthy worker to resume on: {e}"}
                gen.leg = None
                return
            try:
                gen.leg = await self._open_leg(gen, target)
            except LegFailed as e:
                self.pool.report_failure(target, str(e))
                continue
            except WorkerRejected as e:
                gen.finish_reason = {"type": "abort", "message": e.message}
                gen.leg = None
                return
            m = Migration(gen.rid, old.worker, target, "failover")
            gen.migrations.append(m)
            self.driver.migration_accepted(m, self._policy_clock())
            self.metrics.on_migration("failover")
            log.info("request %s resumed on %s after %s", gen.rid, target, why)
            return
