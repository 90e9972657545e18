"""l4: length-specialised stages chosen by the DP, requests moving down the pipeline.

The policy learns a decayed length histogram from arrivals, decode progress and finishes; every
`refine_interval_s` it runs the DP partitioner (Rust) on it and applies the proposed layout when it
is predicted to pay; requests are admitted to the stage holding their length and migrate down the
pipeline as they grow; boundaries diffuse and workers pair up inside a stage between DP runs.
docs/l4.md states every rule; `l4_config` holds the knobs, `l4_layout` the math between DP runs,
`l4_balance` the boundary diffusion. Cost models come in as objects (`make_policy` loads named
ones); nothing here does I/O.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Mapping

import numpy as np

from l4_sglang.core import (
    MAX_CLASSES,
    CostModel,
    InstanceLoad,
    Layout,
    evaluate_layout,
    evaluate_layout_classes,
    log_bin_edges,
    merge_stages,
    move_value,
    partition,
    partition_classes,
    pick_instance,
    pick_marginal,
    pick_migration,
    predicted_work,
)
from l4_sglang.policy.base import (
    LayoutView,
    Migration,
    NoWorkerAvailable,
    Policy,
    RequestInfo,
    StageView,
)
from l4_sglang.policy.book import DEFAULT_REMAINING_TOKENS, Booking
from l4_sglang.policy.histogram import LengthHistogram
from l4_sglang.policy.l4_balance import BoundaryDiffusion
from l4_sglang.policy.l4_config import (
    DIFFUSION_SPAN_BINS,
    EMPTY_SHARE,
    REFINEMENT_HISTORY,
    L4Config,
    Refinement,
)
from l4_sglang.policy.l4_layout import (
    assign_workers,
    decision_reason,
    keep_over_empty,
    relative_gain,
    snap_cuts,
)

__all__ = ["L4", "L4Config", "Refinement"]


class L4(Policy):
    NAME = "l4"
    Config = L4Config
    config: L4Config

    def __init__(
        self,
        config: object | None,
        cost_model: CostModel,
        seed: int = 0,
        cost_models: Mapping[str, CostModel] | None = None,
    ):
        super().__init__(config, cost_model, seed)
        c = self.config
        self._models: dict[str, CostModel] = {}
        missing = sorted(set(c.worker_model_names()) - set(cost_models or {}))
        if missing:
            raise ValueError(
                f"invalid cost_models: no cost model for {', '.join(missing)} of worker_cost_models "
                "(make_policy loads them; the policy reads no files)"
            )
        for worker, model in (cost_models or {}).items():
            if not isinstance(model, CostModel):
                raise ValueError(f"invalid cost_models: {worker!r} maps to {model!r}, not a CostModel")
            self._models[str(worker)] = model
        distinct = {m.to_json() for m in [cost_model, *self._models.values()]}
        if len(distinct) > MAX_CLASSES:
            raise ValueError(
                f"invalid cost_models: {len(distinct)} distinct cost models (the default included); "
                f"the DP takes at most {MAX_CLASSES} instance classes"
            )
        self._edges = log_bin_edges(c.bins, c.max_tokens)
        self._hist = LengthHistogram(self._edges, c.decay_half_life_s)
        self._qoe = c.qoe()
        self._bounds: list[float] = []
        self._stages: list[list[str]] = []
        self._where: dict[str, int] = {}
        self._plan_bounds: list[float] | None = None
        self._diffusion = BoundaryDiffusion(
            c.refine_interval_s, c.decay_half_life_s, c.diffusion_rate, c.diffusion_deadband
        )
        self._predicted_e2e: float | None = None
        self._updated_at = 0.0
        self._planned = False
        self._dirty = False
        self._last_refine = -math.inf
        self._last_balance = -math.inf
        self._picks = 0
        self._prefix: OrderedDict[int, str] = OrderedDict()
        self.refinements: deque[Refinement] = deque(maxlen=REFINEMENT_HISTORY)
        """The latest DP runs and what came of them, oldest first."""
        self.book.remaining = self.remaining

    # Layout bookkeeping.
    def _set_stages(self, bounds: list[float], stages: list[list[str]], now: float) -> None:
        self._bounds, self._stages = bounds, stages
        self._diffusion.reset()
        self._where = {w: k for k, ws in enumerate(stages) for w in ws}
        self._updated_at = float(now)

    def stage_of(self, tokens: float) -> int:
        """Index of the stage whose range holds a length of `tokens`."""
        return bisect_right(self._bounds, tokens)

    def _hi(self, k: int) -> float:
        return self._bounds[k] if k < len(self._bounds) else math.inf

    def _healthy(self, k: int) -> list[str]:
        return [w for w in self._stages[k] if self.book.is_healthy(w)]

    def _nearest_healthy_stage(self, k: int) -> int | None:
        if self._healthy(k):  # the usual case, without sorting the stages
            return k
        for s in sorted(range(len(self._stages)), key=lambda i: (abs(i - k), -i)):
            if self._healthy(s):
                return s
        return None

    def model_of(self, worker_id: str) -> CostModel:
        """The cost model of `worker_id` (its own in a mixed pool, else the default)."""
        return self._models.get(worker_id, self.cost_model)

    def classes(self) -> list[tuple[CostModel, list[str]]]:
        """The registered workers grouped by cost model, in order of first registration."""
        groups: dict[str, tuple[CostModel, list[str]]] = {}
        for w in self.book.workers:
            m = self.model_of(w)
            groups.setdefault(m.to_json(), (m, []))[1].append(w)
        return list(groups.values())

    def _work(self, worker_id: str) -> float:
        return predicted_work(self.model_of(worker_id), self.book.load(worker_id), self.config.horizon_steps)

    def layout(self) -> LayoutView | None:
        if not self._stages:
            return None
        lows = [0.0, *self._bounds]
        highs = [*self._bounds, math.inf]
        stages = tuple(
            StageView(float(lo), float(hi), tuple(ws))
            for lo, hi, ws in zip(lows, highs, self._stages, strict=True)
        )
        return LayoutView(
            stages=stages, predicted_mean_e2e_s=self._predicted_e2e, updated_at=self._updated_at
        )

    # Estimates.
    def remaining(self, b: Booking) -> float:
        """Expected tokens `b` still generates (see the module doc)."""
        if b.info.max_new_tokens is not None:
            return float(max(b.info.max_new_tokens - b.generated, 0))
        est = self._hist.remaining(b.prompt, b.generated)
        return est if est is not None else float(max(b.generated, DEFAULT_REMAINING_TOKENS))

    def _without(self, load: InstanceLoad, b: Booking) -> InstanceLoad:
        """`load` of b's worker after b leaves it."""
        running = max(load.running - 1, 0.0)
        kv = max(load.kv_tokens - b.context, 0.0)
        max_kv = load.max_kv
        if b.context >= load.max_kv:
            others = [
                x.context for x in self.book.workers[b.worker].requests.values() if x.started and x is not b
            ]
            max_kv = float(max(others, default=0))
        max_kv = min(max(max_kv, kv / running), kv) if running > 0 else 0.0
        return InstanceLoad(
            running, kv, max_kv, load.queued_requests, load.queued_tokens, load.mean_remaining
        )

    # Events.
    def add_worker(self, worker_id: str, now: float) -> None:
        if not self.book.add_worker(worker_id, now):
            return
        stages = [list(ws) for ws in self._stages]
        if not stages:
            self._set_stages([], [[worker_id]], now)
            return
        per_worker = [sum(self._work(w) for w in ws) / len(ws) for ws in stages]
        stages[int(np.argmax(per_worker))].append(worker_id)
        self._set_stages(list(self._bounds), stages, now)
        self._dirty = self._planned

    def remove_worker(self, worker_id: str, now: float) -> None:
        if not self.book.remove_worker(worker_id):
            return
        k = self._where[worker_id]
        stages = [[w for w in ws if w != worker_id] for ws in self._stages]
        bounds = list(self._bounds)
        if not stages[k]:
            del stages[k]
            if bounds:
                # Merge into the upper neighbour (the last stage into its lower one).
                del bounds[k if k < len(bounds) else k - 1]
            if self._plan_bounds:
                del self._plan_bounds[k if k < len(self._plan_bounds) else k - 1]
        self._set_stages(bounds, stages, now)
        self._dirty = self._planned

    def route(self, req: RequestInfo, now: float) -> str:
        self.healthy_workers()  # NoWorkerAvailable when none is healthy
        self._hist.add_arrival(req.prompt_tokens, now)
        return self._place(req, now)

    def reroute(self, req: RequestInfo, now: float) -> str:
        """A failover: placed as a new request of its current length, not counted as an arrival."""
        self.healthy_workers()
        return self._place(req, now)

    def _place(self, req: RequestInfo, now: float) -> str:
        length = req.prompt_tokens
        if self.config.admit_by_peak and req.max_new_tokens is not None:
            length += req.max_new_tokens
        k = self._nearest_healthy_stage(self.stage_of(length))
        if k is None:  # unreachable: every registered worker is in a stage
            raise NoWorkerAvailable(f"{self.NAME}: no healthy worker in any stage")
        workers = self._healthy(k)
        worker = self._affine(req, workers)
        if worker is None and len(workers) == 1:  # nothing to weigh (the pick count still advances)
            self._picks += 1
            worker = workers[0]
        if worker is None:
            loads = [self.book.load(w) for w in workers]
            d = self.config.candidates or len(workers) if self._planned else len(workers)
            self._picks += 1
            seed = (self.seed * 0x9E3779B97F4A7C15 + self._picks) % 2**64
        if worker is None and self.config.pick != "work":
            if d < len(workers):
                rng = np.random.default_rng(seed)
                idx = sorted(rng.choice(len(workers), size=d, replace=False))
                workers, loads = [workers[i] for i in idx], [loads[i] for i in idx]
            if self.config.pick == "tokens":
                worker = min(workers, key=lambda w: self.book.outstanding(w)[::-1])
            else:
                models = [self.model_of(w) for w in workers]
                worker = workers[pick_marginal(models, loads, req.prompt_tokens, self.config.horizon_steps)]
        if worker is None:
            models = [self.model_of(w) for w in workers] if self._models else self.cost_model
            worker = workers[pick_instance(models, loads, d, self.config.horizon_steps, seed)]
        if self.config.prefix_affinity and req.prefix_hashes and self.config.prefix_entries > 0:
            self._prefix[req.prefix_hashes[0]] = worker
            self._prefix.move_to_end(req.prefix_hashes[0])
            while len(self._prefix) > self.config.prefix_entries:
                self._prefix.popitem(last=False)
        self.book.route(req, worker, now)
        return worker

    def _affine(self, req: RequestInfo, workers: list[str]) -> str | None:
        if not (self.config.prefix_affinity and req.prefix_hashes):
            return None
        last = self._prefix.get(req.prefix_hashes[0])
        if last is None or last not in workers:
            return None
        least = min(self._work(w) for w in workers)
        return last if self._work(last) <= (1 + self.config.pair_min_gap) * least else None

    def on_progress(self, rid: str, generated_tokens: int, now: float) -> list[Migration]:
        found = self.book.progress(rid, generated_tokens)
        if found is None:
            return []
        b, before = found
        self._hist.add_decode(b.prompt, before, b.generated, now)
        if not (self.config.migration and b.started and b.target is None):
            return []
        k = self._where.get(b.worker)
        if k is None or k == len(self._stages) - 1 or b.context <= self._hi(k) * (1 + self.config.hysteresis):
            return []
        if now - b.examined_at < self.config.balance_interval_s:
            return []
        b.examined_at = now
        for s in range(self.stage_of(b.context), len(self._stages)):
            candidates = self._healthy(s)
            if candidates:
                break
        else:
            return []
        target = min(candidates, key=self._work)
        source = self.book.load(b.worker, with_remaining=True)
        gain, cost = move_value(
            self.model_of(b.worker),
            b.context,
            self.remaining(b),
            source,
            self._without(source, b),
            self.book.load(target, with_remaining=True),
            self.model_of(target),
        )
        if gain > self.config.move_margin * cost:
            return [self.propose(rid, target, "pipeline", now)]
        return []

    def may_move(self, rid: str) -> bool:
        """Yes while a move is possible: a stage of two or more workers (a balance move may pick
        it, unless it asks for fewer than `pair_min_remaining` tokens), or a peak length (prompt +
        max_new_tokens) that may cross its stage's bound."""
        b = self.book.requests.get(rid)
        k = self._where.get(b.worker) if b is not None else None
        if not self.config.migration or b is None or k is None:
            return False
        short = b.info.max_new_tokens is not None and b.info.max_new_tokens < self.config.pair_min_remaining
        if len(self._healthy(k)) > 1 and not short:
            return True
        if k == len(self._stages) - 1:
            return False
        peak = math.inf if b.info.max_new_tokens is None else b.prompt + b.info.max_new_tokens
        return peak > self._hi(k) * (1 + self.config.hysteresis)

    def on_finish(self, rid: str, now: float) -> None:
        b = self.book.finish(rid)
        if b is not None:
            self._hist.add_finish(b.prompt, b.generated, now)

    def tick(self, now: float) -> list[Migration]:
        moves = super().tick(now)
        if self._dirty or now - self._last_refine >= self.config.refine_interval_s:
            self._refine(now)
        if now - self._last_balance >= self.config.balance_interval_s:
            self._last_balance = now
            self._diffuse(now)
            if self.config.migration:
                moves.extend(self._pair(now))
        return moves

    # Refinement.
    def _refine(self, now: float) -> None:
        self._last_refine = now
        n = len(self.book.workers)
        if n == 0 or self.waiting_for() is not None:
            return
        workload = self._hist.workload(now)
        if workload is None:
            return
        groups = self.classes()
        classes = [(m, len(ws)) for m, ws in groups]
        class_of = {w: c for c, (_, ws) in enumerate(groups) for w in ws}
        if len(classes) == 1:
            model = groups[0][0]
            dp = partition(model, workload, n, self._qoe)
            proposed = merge_stages(model, workload, dp, self.config.stage_gain, self._qoe)
        else:
            proposed = partition_classes(classes, workload, self._qoe)
        current: Layout | None = None
        stage_classes = [{class_of[w] for w in ws} for ws in self._stages]
        if self._dirty or sum(len(ws) for ws in self._stages) != n or any(len(c) != 1 for c in stage_classes):
            gain = math.inf
        else:
            counts = [len(ws) for ws in self._stages]
            cuts = snap_cuts(self._edges, self._bounds)
            if len(classes) == 1:
                current = evaluate_layout(groups[0][0], workload, cuts, counts, self._qoe)
            else:
                labels = [next(iter(c)) for c in stage_classes]
                current = evaluate_layout_classes(classes, workload, cuts, counts, labels, self._qoe)
            gain = relative_gain(current, proposed)
        proposed_bounds = [float(s.lo_tokens) for s in proposed.stages[1:]]
        bounds = keep_over_empty(self._hist, self._bounds, proposed_bounds, EMPTY_SHARE)
        same = (
            current is not None
            and bounds == self._bounds
            and list(proposed.instances) == [len(ws) for ws in self._stages]
            and len(classes) == 1
        )
        applied = gain > self.config.min_gain and not same
        reason = decision_reason(
            same=same,
            moved_only_over_empty=proposed_bounds != self._bounds,
            replanned=current is None,
            applied=applied,
            gain=gain,
            min_gain=self.config.min_gain,
        )
        if applied:
            order = list(self.book.workers)
            assigned = assign_workers(
                self._stages, order, class_of, proposed.instances, proposed.classes, self._mean_context
            )
            self._set_stages(bounds, assigned, now)
            self._plan_bounds = list(bounds)
            self._predicted_e2e = proposed.mean_e2e_s
            self._planned, self._dirty = True, False
        elif current is not None:
            self._predicted_e2e = current.mean_e2e_s
        self.refinements.append(
            Refinement(
                at=float(now),
                current_cost=None if current is None else current.total_cost,
                proposed_cost=proposed.total_cost,
                gain=gain,
                applied=applied,
                boundaries=tuple(proposed.boundaries),
                instances=tuple(proposed.instances),
                classes=tuple(proposed.classes),
                reason=reason,
            )
        )

    def waiting_for(self) -> str | None:
        """What the first DP run still waits for, in words (None once it may run)."""
        h, c = self._hist, self.config
        if h.arrivals < c.min_arrivals:
            return f"{c.min_arrivals} arrivals before the first layout (seen {h.arrivals})"
        if h.finished < c.min_samples:
            return f"{c.min_samples} finished requests before the first layout (seen {h.finished})"
        return None

    @property
    def last_refinement(self) -> Refinement | None:
        return self.refinements[-1] if self.refinements else None

    def _mean_context(self, worker_id: str) -> float:
        ctx = [b.context for b in self.book.workers[worker_id].requests.values() if b.started]
        return sum(ctx) / len(ctx) if ctx else 0.0

    # Balance.
    def _diffuse(self, now: float) -> None:
        """Move each boundary on its two stages' transient load (l4_balance)."""
        work = [
            sum(self._work(w) for w in ws) / len(ws) if (ws := self._healthy(k)) else None
            for k in range(len(self._stages))
        ]
        span = float(self._edges[2] / self._edges[1]) ** DIFFUSION_SPAN_BINS
        moved = self._diffusion.step(
            now,
            work,
            self._bounds,
            self._plan_bounds,
            float(self._edges[-1]),
            span,
            lambda a, b: self._hist.is_empty(a, b, EMPTY_SHARE),
            self._hist.share,
        )
        if moved:
            self._updated_at = float(now)

    def _pair(self, now: float) -> list[Migration]:
        moves = []
        for k in range(len(self._stages)):
            workers = self._healthy(k)
            if len(workers) < 2:
                continue
            loads = [self.book.load(w, with_remaining=True) for w in workers]
            floor = self.config.pair_min_remaining
            lists = [
                [(b.iid, b.context, n) for b in self.book.running(w) if (n := self.remaining(b)) >= floor]
                for w in workers
            ]
            models = [self.model_of(w) for w in workers] if self._models else self.cost_model
            m = pick_migration(
                models,
                loads,
                lists,
                self.config.pair_min_gap,
                self.config.pair_margin,
                self.config.horizon_steps,
            )
            if m is not None:
                b = self.book.by_iid[m.request]
                moves.append(self.propose(b.rid, workers[m.target], "balance", now))
        return moves
