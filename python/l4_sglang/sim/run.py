"""`simulate`: a trace through a simulated fleet, driving the same policy objects as the router.

The simulator is the event adapter over `policy.driver.PolicyDriver`, as the
router is the socket one: every policy call goes through the driver, which
owns the protocol (stale proposals, the generated-token base, failover). What
the simulator tells it, and when:
- arrival: `driver.arrive(RequestInfo(rid, prompt, max_new, prefix_hashes), now)`,
  then the request is queued on that instance. `max_new` is the requested
  output length (bench_serving sends max_new_tokens with ignore_eos);
  `prefix_hashes` are the first 8 hash ids, as the router takes a client's.
  A request that can never fit the instance's KV fails (`driver.abort`).
- progress: the router calls `driver.progress` once per stream chunk; the
  simulator batches it: at the first token, at every multiple of
  `progress_every_tokens` and at the last token. The count is the request's tokens across
  migrations, as the router's is.
- finish: `driver.finish` at the step end that produced the last token.
- load polls: every `load_poll_interval_s`, one `driver.loads` with every
  live instance's snapshot (what the router can see: max_kv and mean_remaining
  are 0 unless `detailed_snapshots`).
- ticks: every `tick_interval_s`, `driver.tick`.
- layouts: `policy.layout()` at the start and after every tick (the only
  event at which L4 changes its stages here: refinement and boundary
  diffusion run in `tick`); a sample is kept when the stages (bounds or
  workers) differ from the last one kept. `SimResult.layouts` holds them with
  their simulated time; empty for policies without a layout.
- migrations (from progress or tick): the driver drops stale ones; one the
  target cannot hold is refused (`driver.migration_refused`); otherwise the
  request is aborted on the source and resubmitted to the target with
  prompt + generated tokens as its prompt (the engine charges that prefill,
  minus what the target's prefix cache holds) and the remaining tokens as
  max_new_tokens, then `driver.migration_accepted`. The router does the same
  with a network round trip in between; here it is instantaneous.
- worker loss (`Simulator.lose_worker(worker, at)`): the instance stops
  stepping and is gone from load polls, the driver is told
  (`driver.worker_removed`), and each request that ran there is failed over
  (`driver.failover`, reason "failover"), resumed on its new worker as a
  migration is: the router's answer to a broken worker connection.
Periodic events stop once every request is done. A request asking for 0
output tokens (some trace rows do) generates 1: its first token is what TTFT times.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterable, Mapping
from typing import Any, Protocol

from l4_sglang.core import CostModel
from l4_sglang.policy.base import LayoutView, Migration, NoWorkerAvailable, Policy, RequestInfo
from l4_sglang.policy.driver import PREFIX_BLOCKS, PolicyDriver
from l4_sglang.policy.registry import make_policy
from l4_sglang.sim.cluster import Cluster, engine_config, unique_hash_ids
from l4_sglang.sim.engine import Event, EventLoop, Kind
from l4_sglang.sim.metrics import LayoutSample, RequestRecord, SimResult
from l4_sglang.worker.engine import EngineConfig, Request

ProgressFn = Callable[[int, int, float], None]
"""(requests done, requests in all, simulated seconds)."""


class TraceLike(Protocol):
    arrival_s: float
    prompt_tokens: int
    output_tokens: int


class Simulator:
    def __init__(
        self,
        requests: Iterable[Any],
        policy: Policy,
        cost_model: CostModel,
        instances: int,
        *,
        engine: EngineConfig | None = None,
        load_poll_interval_s: float = 0.5,
        tick_interval_s: float = 0.25,
        progress_every_tokens: int = 16,
        detailed_snapshots: bool = False,
        tell_max_new_tokens: bool = True,
        progress: ProgressFn | None = None,
        instance_models: Mapping[str, CostModel] | None = None,
    ) -> None:
        if not load_poll_interval_s > 0 or not tick_interval_s > 0:
            raise ValueError("invalid intervals: load_poll_interval_s and tick_interval_s must be > 0")
        if progress_every_tokens < 1:
            raise ValueError(f"invalid progress_every_tokens: must be >= 1, got {progress_every_tokens}")
        self.policy = policy
        self.driver = PolicyDriver(policy)
        self.cost_model = cost_model
        self.cluster = Cluster(
            instances, cost_model, engine or engine_config(cost_model), self._on_token, instance_models
        )
        self.poll_s = float(load_poll_interval_s)
        self.tick_s = float(tick_interval_s)
        self.every = int(progress_every_tokens)
        self.detailed = detailed_snapshots
        self.tell_max_new = tell_max_new_tokens
        self.progress = progress
        self.records: list[RequestRecord] = []
        for i, r in enumerate(sorted(requests, key=lambda r: float(r.arrival_s))):
            prompt, out = int(r.prompt_tokens), max(int(r.output_tokens), 1)
            if prompt < 1:
                raise ValueError(f"invalid request {i}: prompt_tokens must be >= 1, got {prompt}")
            hashes = getattr(r, "hash_ids", None)
            hashes = list(hashes) if hashes else unique_hash_ids(i, prompt)
            self.records.append(RequestRecord(f"r{i}", i, float(r.arrival_s), prompt, out, hashes))
        self.by_rid = {r.rid: r for r in self.records}
        self.done = 0
        self.migrations = 0
        self.failed_migrations = 0
        self.failovers = 0
        self.lost: set[str] = set()
        """Instances lost so far: they step no more and no poll sees them."""
        self._moves: list[Migration] = []
        self.layouts: list[LayoutSample] = []
        self.loop = EventLoop()
        self.loop.on(Kind.STEP_END, self._step_end)
        self.loop.on(Kind.ARRIVAL, self._arrival)
        self.loop.on(Kind.STEP_START, self._step_start)
        self.loop.on(Kind.LOAD, self._load)
        self.loop.on(Kind.TICK, self._tick)
        self.loop.on(Kind.WORKER_LOST, self._lose)

    def lose_worker(self, worker: str, at: float) -> None:
        """Lose instance `worker` at simulated time `at` (call before `run`): it stops, and the
        requests it held are failed over to the others, as the router does on a dead worker."""
        if worker not in self.cluster.instances:
            raise ValueError(f"invalid worker: no instance {worker!r}")
        self.loop.push(float(at), Kind.WORKER_LOST, worker)

    # ---- running ----------------------------------------------------------------

    def run(self) -> SimResult:
        t0 = time.perf_counter()
        start = self.records[0].arrival_s if self.records else 0.0
        self.loop.now = start
        for wid in self.cluster.worker_ids:
            self.driver.worker_added(wid, start)
        self.driver.loads(self.cluster.snapshots(self.detailed), start)
        self._record_layout(start)
        for rec in self.records:
            self.loop.push(rec.arrival_s, Kind.ARRIVAL, rec)
        if self.records:
            self.loop.push(start + self.poll_s, Kind.LOAD)
            self.loop.push(start + self.tick_s, Kind.TICK)
        self.loop.run()
        return SimResult(
            policy=self.policy.NAME,
            instances=len(self.cluster.instances),
            cost_model=self.cost_model.name,
            seed=self.policy.seed,
            records=self.records,
            migrations=self.migrations,
            failed_migrations=self.failed_migrations,
            failovers=self.failovers,
            events=self.loop.processed,
            steps=sum(i.steps for i in self.cluster.instances.values()),
            wall_s=time.perf_counter() - t0,
            retractions=sum(i.engine.stats.retractions for i in self.cluster.instances.values()),
            layouts=self.layouts,
        )

    @property
    def all_done(self) -> bool:
        return self.done == len(self.records)

    # ---- handlers -----------------------------------------------------------------

    def _arrival(self, now: float, rec: RequestRecord) -> list[Event]:
        info = RequestInfo(
            rec.rid,
            rec.prompt_tokens,
            rec.output_tokens if self.tell_max_new else None,
            tuple(rec.hash_ids[:PREFIX_BLOCKS]),
        )
        try:
            wid = self.driver.arrive(info, now)
        except NoWorkerAvailable as e:  # every instance was lost
            rec.failed = str(e)
            self._ended(rec, now, finished=False)
            return []
        why = self.cluster.admissible(wid, rec.prompt_tokens)
        if why is not None:
            rec.failed = why
            self._ended(rec, now, finished=False)
            return []
        return self._submit(rec, wid, rec.prompt_tokens, rec.output_tokens, now)

    def _submit(self, rec: RequestRecord, wid: str, prompt: int, max_new: int, now: float) -> list[Event]:
        rec.worker = wid
        rec.leg = self.cluster.submit(wid, rec.rid, prompt, max_new, rec.hash_ids, now)
        if self.cluster.needs_kick(wid):
            return [(now, Kind.STEP_START, wid)]
        return []

    def _step_start(self, now: float, wid: str) -> list[Event]:
        if wid in self.lost:
            return []
        end = self.cluster.start(wid, now)
        return [] if end is None else [(end, Kind.STEP_END, wid)]

    def _step_end(self, now: float, wid: str) -> list[Event]:
        if wid in self.lost:
            return []  # the step in flight when it was lost never lands
        self.cluster.finish(wid, now)
        out: list[Event] = []
        if self._moves:  # before this instance plans again, so a request moved away is not in it
            moves, self._moves = self._moves, []
            out.extend(self._execute(moves, now))
        end = self.cluster.start(wid, now)
        if end is not None:
            out.append((end, Kind.STEP_END, wid))
        return out

    def _load(self, now: float, _: Any) -> list[Event]:
        if self.all_done:
            return []
        snaps = self.cluster.snapshots(self.detailed)
        if self.lost:
            snaps = [s for s in snaps if s.worker_id not in self.lost]
        self.driver.loads(snaps, now)
        return [(now + self.poll_s, Kind.LOAD, None)]

    def _tick(self, now: float, _: Any) -> list[Event]:
        if self.all_done:
            return []
        out = self._execute(self.driver.tick(now), now)
        self._record_layout(now)
        out.append((now + self.tick_s, Kind.TICK, None))
        return out

    def _record_layout(self, now: float) -> None:
        view: LayoutView | None = self.policy.layout()
        if view is None:
            return
        sample = LayoutSample.of(now, view)
        last = self.layouts[-1] if self.layouts else None
        if last is None or last.bounds != sample.bounds or last.workers != sample.workers:
            self.layouts.append(sample)

    # ---- tokens, finishes and migrations --------------------------------------------------

    def _on_token(self, req: Request, now: float) -> None:
        """The engine's update hook: a request gained a token or finished (or was aborted)."""
        rec = self.by_rid[req.rid]
        if rec.leg is not req:  # an aborted leg of a migrated request
            return
        generated = rec.base + len(req.output_ids)
        while rec.generated < generated:
            rec.token_times.append(now)
            rec.generated += 1
        if req.finished:
            if req.finish_reason and req.finish_reason.get("type") == "abort":
                rec.failed = str(req.finish_reason.get("message"))
                self._ended(rec, now, finished=False)
                return
            if rec.last_progress < generated:
                self._progress(rec, now)
            rec.finished_s = now
            self._ended(rec, now, finished=True)
        elif rec.generated == 1 or rec.generated // self.every > rec.last_progress // self.every:
            self._progress(rec, now)

    def _progress(self, rec: RequestRecord, now: float) -> None:
        rec.last_progress = rec.generated
        moves = self.driver.progress(rec.rid, rec.generated, now)
        if moves:
            self._moves.extend(moves)  # executed after the step is applied

    def _ended(self, rec: RequestRecord, now: float, finished: bool) -> None:
        rec.leg = None
        if finished:
            self.driver.finish(rec.rid, now)
        else:
            self.driver.abort(rec.rid, now)
        self.done += 1
        if self.progress is not None:
            self.progress(self.done, len(self.records), now)

    def _execute(self, moves: list[Migration], now: float) -> list[Event]:
        out: list[Event] = []
        for m in moves:
            if not self.driver.current(m):
                continue  # stale since it was proposed (e.g. the request finished in the same step)
            rec = self.by_rid[m.rid]
            remaining = rec.output_tokens - rec.generated
            context = rec.prompt_tokens + rec.generated
            if (
                m.target == m.source
                or m.target not in self.cluster.instances
                or m.target in self.lost
                or remaining < 1
                or self.cluster.admissible(m.target, context) is not None
            ):
                self.failed_migrations += 1
                self.driver.migration_refused(m, now)
                continue
            rec.leg = None  # the abort's update is not this request's
            self.cluster.abort(m.source, rec.rid, now)
            out.extend(self._resubmit(rec, m.target, now))
            rec.migrations += 1
            self.migrations += 1
            self.driver.migration_accepted(m, now)
        return out

    def _resubmit(self, rec: RequestRecord, wid: str, now: float) -> list[Event]:
        """Continue `rec` on `wid` from the tokens it has: they become part of its prompt."""
        rec.base = rec.generated
        context = rec.prompt_tokens + rec.generated
        return self._submit(rec, wid, context, rec.output_tokens - rec.generated, now)

    def _lose(self, now: float, wid: str) -> list[Event]:
        if wid in self.lost:
            return []
        self.lost.add(wid)
        out: list[Event] = []
        for rid in self.driver.worker_removed(wid, now):
            rec = self.by_rid[rid]
            rec.leg = None  # its engine is gone with the instance
            try:
                target = self.driver.failover(rid, rec.generated, now)
            except (NoWorkerAvailable, ValueError) as e:
                rec.failed = f"no worker to resume on: {e}"
                self._ended(rec, now, finished=False)
                continue
            why = self.cluster.admissible(target, rec.prompt_tokens + rec.generated)
            if why is not None:
                rec.failed = why
                self._ended(rec, now, finished=False)
                continue
            out.extend(self._resubmit(rec, target, now))
            rec.failovers += 1
            self.failovers += 1
            self.driver.migration_accepted(Migration(rid, wid, target, "failover"), now)
        return out


def simulate(
    trace_requests: Iterable[Any],
    policy_name: str,
    cost_model: CostModel,
    instances: int,
    seed: int = 0,
    policy_overrides: Mapping[str, Any] | None = None,
    load_poll_interval_s: float = 0.5,
    tick_interval_s: float = 0.25,
    progress_every_tokens: int = 16,
    *,
    engine: EngineConfig | None = None,
    detailed_snapshots: bool = False,
    tell_max_new_tokens: bool = True,
    progress: ProgressFn | None = None,
) -> SimResult:
    """Replay `trace_requests` (anything with arrival_s, prompt_tokens, output_tokens and
    optionally hash_ids) through `instances` simulated workers routed by `policy_name`."""
    policy = make_policy(policy_name, cost_model, policy_overrides, seed)
    sim = Simulator(
        trace_requests,
        policy,
        cost_model,
        instances,
        engine=engine,
        load_poll_interval_s=load_poll_interval_s,
        tick_interval_s=tick_interval_s,
        progress_every_tokens=progress_every_tokens,
        detailed_snapshots=detailed_snapshots,
        tell_max_new_tokens=tell_max_new_tokens,
        progress=progress,
    )
    return sim.run()


__all__ = ["PREFIX_BLOCKS", "Simulator", "TraceLike", "simulate"]
