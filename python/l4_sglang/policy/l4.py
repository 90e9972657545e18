"""l4: length-specialised stages chosen by the DP, requests moving down the pipeline.

What it does with each event (DESIGN.md "L4, as we build it"):

- **Learning the workload.** Arrivals, decode progress and finishes feed a
  decayed histogram over `bins` log-spaced length bins up to `max_tokens`
  (`histogram.LengthHistogram`, half-life `decay_half_life_s` of `now` time).
  Its per-bin arrays are the DP's `Workload`, computed directly (no request
  reservoir). The remaining tokens of a running request are `max_new_tokens -
  generated` when `max_new_tokens` is known, else the mean residual output of
  finished requests of its prompt bin that ran longer than it has so far,
  else max(generated, 256).
- **Layout.** Stages are contiguous length ranges [0, b1), [b1, b2), ...,
  [b_last, inf), each owning at least one worker; every registered worker is
  in exactly one stage. Until `min_arrivals` requests have arrived (prompt
  lengths are known at admission, so a first layout needs no finished request;
  `min_samples` can also ask for finished ones) there is one stage of all
  workers and a new request goes to the least loaded of them (all sampled).
  Then every `refine_interval_s`, `tick` runs `partition` on the
  histogram and prices the current layout with `evaluate_layout` (its
  boundaries snapped to the nearest bin edges). A proposed boundary that differs
  from the current one only across an empty length range (less than
  EMPTY_SHARE of the histogram's arrivals and decode tokens) is kept where it
  is, and a proposal that then changes no stage's range or size changes no
  request's destination and is not applied. Otherwise the DP's layout is applied only
  when its relative gain in predicted QoE cost is above `min_gain` (an
  infeasible current layout is always replaced by a feasible one; between two
  infeasible ones the excess work is compared), or at once when workers were
  added or removed since the last applied layout. Applied boundaries are bin
  edges. With `stage_gain` > 0 the DP's layout is first thinned: neighbour
  stages merge (the cheapest merge first) while a merge raises the predicted
  cost by less than `stage_gain` of it, so every extra stage must earn its keep
  (the DP's fluid queueing model sees no loss of pooling in small stages, and
  prices each stage's length mix at its top edge: on short-prompt traces it
  splits into 8-10 stages of 1-2 instances that do worse than one).
  Workers keep their order: the old stages' workers, each stage's
  sorted by the mean context of what they run, fill the new stages in order,
  so a worker changes stage only where the counts make it; a worker that
  changes stage keeps its running requests (they finish or migrate by the
  rules below).
- **Admission.** A request goes to the stage holding its prompt length (its
  predicted peak, prompt + max_new_tokens, with `admit_by_peak`), or the
  nearest stage with a healthy worker (the upper one on a tie); inside it,
  with `pick` "marginal" (the default), to the worker where it adds the least
  request-seconds: its own queueing, prefill and decode over `horizon_steps`,
  plus the slowdown its length brings to the batch it joins (the cost model's
  length-mix term); "work" takes the least predicted work (before 2026-11-23
  the only pick), "tokens" the fewest outstanding tokens (as least_load).
  `candidates` 0 (the default) weighs every worker of the stage (stages are
  small); d > 0 samples d with a seed drawn from the policy's seed and a
  counter (router replicas without shared state). With `prefix_affinity`, a
  request whose first prefix block hash was last routed to a worker of that
  stage goes there again if its predicted work is at most (1 + pair_min_gap)
  times the stage's least (an LRU of `prefix_entries` hashes).
- **Pipeline migration** (`on_progress`). When a request's context exceeds
  its worker's stage bound times (1 + hysteresis) and a later stage exists, it
  is proposed to move to the least loaded healthy worker of the stage holding
  its context if `move_value` predicts a gain above `move_margin` times the
  recompute cost. A
  request whose move did not pay is weighed again at most once per
  `balance_interval_s`. Requests below their worker's range (after a layout
  change) just finish there.
- **Balance** (`tick`, every `balance_interval_s`). Each boundary between two
  stages diffuses (`diffuse_boundary`) on their transient load: each stage's
  mean predicted work per healthy worker, averaged exponentially over
  `refine_interval_s`, divided by the same averaged over `decay_half_life_s`
  since the stage last changed. Only departures from a stage's usual load
  move a boundary (the DP chose unequal loads on purpose, and the cost model's
  absolute numbers may be off for a real engine), never further than
  DIFFUSION_SPAN_BINS bins from where the DP put it nor past the log-midpoint
  to the DP's neighbouring boundary, so no stage collapses. Boundaries return
  to bin edges when the DP's next layout is applied (a DP run that is not
  applied leaves them where they drifted). Inside each stage, `pick_migration`
  pairs the busiest and idlest workers (`pair_min_gap`, `pair_margin`),
  leaving alone requests with fewer than `pair_min_remaining` tokens to go:
  their recompute cannot pay back, and the router can then send a request
  asking for fewer as one plain worker request (`may_move`).
- **Workers.** An added worker joins the stage with the most predicted work
  per worker; a removed worker leaves its stage, and a stage left without
  workers merges into its upper neighbour (the last into its lower one). Either
  way the next `tick` repartitions. Unhealthy and removed workers are never
  routed to, nor proposed as migration targets.

- **Mixed pools.** `worker_cost_models` ("WORKER=COST_MODEL" pairs, a
  shipped name or a JSON path; the router flag `--l4-worker-cost-models
  URL=NAME,URL=NAME`) or the constructor's `cost_models` mapping give a
  worker its own cost model; the others use the policy's `cost_model`. At
  most 3 distinct models (the default one counts). Workers of one model form
  a class; refinement runs `partition_classes` (each stage on one class; with
  one class it is `partition`, unchanged), prices the current layout with
  `evaluate_layout_classes` when each of its stages is one class (else the
  DP's layout is applied), and fills each stage from its class's workers in
  their old order. Predicted work (admission, in-stage pairing, the pipeline
  move's gain and recompute, diffusion loads) prices each worker with its own
  model. The book's KV-capacity fallback stays the default model's. Naming the
  model per worker is explicit on purpose: nothing is read from a worker's
  /server_info, so a real SGLang worker and an emulated one are configured
  alike.

`migration=False` turns off both kinds of migration.
"""

from __future__ import annotations

import math
from bisect import bisect_right
from collections import OrderedDict, deque
from collections.abc import Mapping
from dataclasses import dataclass, field

import numpy as np

from l4_sglang.core import (
    MAX_CLASSES,
    CostModel,
    InstanceLoad,
    Layout,
    QoeConfig,
    diffuse_boundary,
    evaluate_layout,
    evaluate_layout_classes,
    log_bin_edges,
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
    PolicyConfig,
    RequestInfo,
    StageView,
    check_config,
    finite,
)
from l4_sglang.policy.book import DEFAULT_REMAINING_TOKENS, Booking
from l4_sglang.policy.histogram import LengthHistogram

_QOE = QoeConfig()

REFINEMENT_HISTORY = 64
"""DP runs `L4.refinements` keeps."""

EMPTY_SHARE = 1e-3
"""A length range holding less than this share of the histogram's (decayed) arrivals and decode
tokens counts as empty: moving a boundary across it changes no request's destination."""

DIFFUSION_SPAN_BINS = 2
"""Diffusion keeps a boundary within this many bin widths (log space) of where
the DP put it: the DP sets targets, diffusion handles transients."""


def _knob(default, text: str):
    return field(default=default, metadata={"help": text})


@dataclass(frozen=True)
class L4Config(PolicyConfig):
    bins: int = _knob(32, "log-spaced length bins of the histogram and the DP")
    max_tokens: int = _knob(131072, "top of the last bin (longer contexts count in it)")
    refine_interval_s: float = _knob(5.0, "seconds between DP runs in tick()")
    min_gain: float = _knob(0.05, "relative predicted QoE gain a new layout needs to be applied")
    stage_gain: float = _knob(
        0.05,
        "relative predicted QoE gain each stage beyond the first must earn (else it merges with a neighbour)",
    )
    decay_half_life_s: float = _knob(60.0, "half-life of the length histogram, seconds")
    candidates: int = _knob(0, "workers sampled inside a stage for a new request (0: all of the stage)")
    pick: str = _knob(
        "marginal",
        "in-stage pick: marginal (least request-seconds added, own and the batch's), work (least "
        "predicted work), tokens (least outstanding tokens)",
    )
    migration: bool = _knob(True, "propose migrations (pipeline and in-stage balance)")
    hysteresis: float = _knob(0.1, "a request migrates once its context exceeds its stage bound x (1 + this)")
    admit_by_peak: bool = _knob(False, "admit by prompt + max_new_tokens when max_new_tokens is given")
    diffusion_rate: float = _knob(0.25, "log-space boundary step per unit of relative load imbalance")
    diffusion_deadband: float = _knob(0.1, "relative imbalance below which boundaries stay put")
    move_margin: float = _knob(
        1.0, "a pipeline migration's predicted gain must exceed this times its recompute cost"
    )
    pair_min_gap: float = _knob(0.2, "relative work gap between two workers of a stage worth a migration")
    pair_margin: float = _knob(1.0, "an in-stage migration's gain must exceed this times its cost")
    pair_min_remaining: int = _knob(
        32, "in-stage migrations leave alone requests with fewer tokens left to generate than this"
    )
    prefix_affinity: bool = _knob(True, "send a known first prefix block to the worker that last had it")
    slo_ttft_s: float = _knob(_QOE.slo_ttft_s, "TTFT SLO of the DP's QoE, seconds")
    slo_tpot_s: float = _knob(_QOE.slo_tpot_s, "TPOT SLO of the DP's QoE, seconds")
    slo_penalty_s: float = _knob(_QOE.slo_penalty_s, "seconds of latency one SLO violation is worth")
    max_utilization: float = _knob(_QOE.max_utilization, "utilisation above which a stage is overloaded")
    min_samples: int = _knob(0, "finished requests before the first DP (until then one stage)")
    min_arrivals: int = _knob(
        20, "arrivals before the first DP (until then one stage; prompt lengths are known at admission)"
    )
    balance_interval_s: float = _knob(1.0, "seconds between diffusion and in-stage pairing in tick()")
    horizon_steps: float = _knob(100.0, "decode steps of predicted work per running batch")
    prefix_entries: int = _knob(4096, "first-block hashes the prefix-affinity LRU keeps")
    worker_cost_models: tuple[str, ...] = _knob(
        (), "WORKER=COST_MODEL pairs (shipped name or JSON path) of a mixed pool; others use the default"
    )

    def __post_init__(self):
        positive = ("finite and > 0", lambda x: finite(x) and x > 0)
        at_least_0 = ("finite and >= 0", lambda x: finite(x) and x >= 0)
        rules = {
            "bins": (">= 1", lambda x: x >= 1),
            "max_tokens": ("> 16 (the first log edge)", lambda x: x > 16),
            "refine_interval_s": at_least_0,
            "min_gain": at_least_0,
            "stage_gain": at_least_0,
            "decay_half_life_s": ("> 0 (inf: no decay)", lambda x: x > 0),
            "candidates": (">= 0", lambda x: x >= 0),
            "pick": ("work, tokens or marginal", lambda x: x in ("work", "tokens", "marginal")),
            "hysteresis": at_least_0,
            "diffusion_rate": at_least_0,
            "diffusion_deadband": ("in [0, 1)", lambda x: 0 <= x < 1),
            "move_margin": at_least_0,
            "pair_min_gap": at_least_0,
            "pair_margin": at_least_0,
            "pair_min_remaining": (">= 0", lambda x: x >= 0),
            "slo_ttft_s": positive,
            "slo_tpot_s": positive,
            "slo_penalty_s": at_least_0,
            "max_utilization": ("in (0, 1)", lambda x: 0 < x < 1),
            "min_samples": (">= 0", lambda x: x >= 0),
            "min_arrivals": (">= 0", lambda x: x >= 0),
            "balance_interval_s": at_least_0,
            "horizon_steps": at_least_0,
            "prefix_entries": (">= 0", lambda x: x >= 0),
        }
        check_config(self, {k: (what, ok(getattr(self, k))) for k, (what, ok) in rules.items()})
        self.worker_model_names()

    def worker_model_names(self) -> dict[str, str]:
        """`worker_cost_models` as {worker: cost model name or path}."""
        out: dict[str, str] = {}
        for item in self.worker_cost_models:
            worker, sep, name = str(item).partition("=")
            if not (sep and worker.strip() and name.strip()):
                raise ValueError(f"invalid worker_cost_models: {item!r} is not WORKER=COST_MODEL")
            if worker.strip() in out:
                raise ValueError(f"invalid worker_cost_models: worker {worker.strip()!r} is listed twice")
            out[worker.strip()] = name.strip()
        return out

    def qoe(self) -> QoeConfig:
        return QoeConfig(self.slo_ttft_s, self.slo_tpot_s, self.slo_penalty_s, self.max_utilization)


@dataclass(frozen=True)
class Refinement:
    """What the last DP run decided (for logs, tests and the router's status page)."""

    at: float
    current_cost: float | None
    """Predicted QoE cost of the layout in place; None when workers changed (applied regardless)."""
    proposed_cost: float
    gain: float
    applied: bool
    boundaries: tuple[float, ...]
    instances: tuple[int, ...]
    classes: tuple[int, ...] = ()
    """Instance class of each proposed stage (indices into `L4.classes()`)."""
    reason: str = ""
    """Why it was applied or kept, in words."""


def _gain(current: Layout, proposed: Layout) -> float:
    if current.feasible and proposed.feasible:
        c = current.total_cost
        return (c - proposed.total_cost) / c if c > 0 else 0.0
    if proposed.feasible:
        return math.inf
    if current.feasible:
        return -math.inf
    e = current.excess_work
    return (e - proposed.excess_work) / e if e > 0 else 0.0


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
        loaded: dict[str, CostModel] = {}
        self._models: dict[str, CostModel] = {}
        for worker, name in c.worker_model_names().items():
            if name not in loaded:
                loaded[name] = CostModel.load(name)
            self._models[worker] = loaded[name]
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
        self._short: list[tuple[float, float]] | None = None
        self._long: list[tuple[float, float]] | None = None
        self._last_smooth = 0.0
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
        self._short = self._long = None
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
    def _cuts(self) -> list[int]:
        """The current boundaries as bin indices (nearest edge in log space), strictly increasing."""
        bins = self._edges.size - 1
        logs = np.log(self._edges[1:bins])
        cuts = [int(np.argmin(np.abs(logs - math.log(b)))) + 1 for b in self._bounds]
        for i in range(len(cuts)):
            cuts[i] = max(cuts[i], cuts[i - 1] + 1 if i else 1)
        for i in reversed(range(len(cuts))):
            cuts[i] = min(cuts[i], bins - (len(cuts) - i))
        return [0, *cuts, bins]

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
            proposed = self._merge(groups[0][0], workload, partition(groups[0][0], workload, n, self._qoe))
        else:
            proposed = partition_classes(classes, workload, self._qoe)
        current: Layout | None = None
        stage_classes = [{class_of[w] for w in ws} for ws in self._stages]
        if self._dirty or sum(len(ws) for ws in self._stages) != n or any(len(c) != 1 for c in stage_classes):
            gain = math.inf
        else:
            counts = [len(ws) for ws in self._stages]
            if len(classes) == 1:
                current = evaluate_layout(groups[0][0], workload, self._cuts(), counts, self._qoe)
            else:
                labels = [next(iter(c)) for c in stage_classes]
                current = evaluate_layout_classes(classes, workload, self._cuts(), counts, labels, self._qoe)
            gain = _gain(current, proposed)
        bounds = self._keep_over_empty([float(s.lo_tokens) for s in proposed.stages[1:]])
        same = (
            current is not None
            and bounds == self._bounds
            and list(proposed.instances) == [len(ws) for ws in self._stages]
            and len(classes) == 1
        )
        applied = gain > self.config.min_gain and not same
        proposed_bounds = [float(s.lo_tokens) for s in proposed.stages[1:]]
        if same and proposed_bounds == self._bounds:
            reason = "kept: the DP proposes the layout in place"
        elif same:
            reason = "kept: the proposal moves boundaries only across empty length ranges"
        elif current is None:
            reason = "applied: the workers changed (or no layout was planned yet)"
        elif applied:
            reason = f"applied: predicted QoE cost {gain:.1%} lower"
        else:
            reason = f"kept: predicted gain {gain:.1%} is not above min_gain {self.config.min_gain:.1%}"
        if applied:
            assigned = self._assign(proposed.instances, proposed.classes, class_of)
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

    def _empty_between(self, a: float, b: float) -> bool:
        """No traffic in lengths [min(a, b), max(a, b)): a boundary moved across it moves nobody."""
        lo, hi = (a, b) if a <= b else (b, a)
        if lo == hi:
            return True
        h = self._hist
        first, last = h.bin_of(lo), h.bin_of(float(np.nextafter(hi, 0)))
        arrivals, tokens = h.count[first : last + 1], h.tokens[first : last + 1]
        return bool(
            arrivals.sum() <= EMPTY_SHARE * h.count.sum() and tokens.sum() <= EMPTY_SHARE * h.tokens.sum()
        )

    def _keep_over_empty(self, bounds: list[float]) -> list[float]:
        """`bounds` with each one that differs from the current only across emptiness left as it is."""
        if len(bounds) != len(self._bounds):
            return bounds
        return [
            cur if self._empty_between(cur, new) else new
            for cur, new in zip(self._bounds, bounds, strict=True)
        ]

    def _cuts_of(self, bounds) -> list[int]:
        logs = np.log(self._edges[1:-1])
        return [0, *(int(np.argmin(np.abs(logs - math.log(b)))) + 1 for b in bounds), self._edges.size - 1]

    def _merge(self, model: CostModel, workload, layout: Layout) -> Layout:
        """Merge neighbour stages while the cheapest merge costs less than `stage_gain` of the
        layout's predicted cost: a stage must earn its keep (the DP's fluid model sees no pooling loss)."""
        if self.config.stage_gain <= 0 or not layout.feasible or len(layout.instances) < 2:
            return layout
        cuts, counts = self._cuts_of(layout.boundaries), list(layout.instances)
        while len(counts) > 1:
            cost = layout.total_cost
            best = None
            for k in range(len(counts) - 1):
                c2 = cuts[: k + 1] + cuts[k + 2 :]
                n2 = [*counts[:k], counts[k] + counts[k + 1], *counts[k + 2 :]]
                trial = evaluate_layout(model, workload, c2, n2, self._qoe)
                if trial.feasible and (best is None or trial.total_cost < best[0].total_cost):
                    best = (trial, c2, n2)
            if best is None or best[0].total_cost - cost > self.config.stage_gain * cost:
                break
            layout, cuts, counts = best
        return layout

    @property
    def last_refinement(self) -> Refinement | None:
        return self.refinements[-1] if self.refinements else None

    def _assign(self, counts: list[int], classes: list[int], class_of: dict[str, int]) -> list[list[str]]:
        """Workers for new stages of `counts` (stage s from class `classes[s]`), each
        class's workers taken in the order of their old stages."""
        order = list(self.book.workers)
        rank = {w: i for i, w in enumerate(order)}

        def mean_context(w: str) -> float:
            ctx = [b.context for b in self.book.workers[w].requests.values() if b.started]
            return sum(ctx) / len(ctx) if ctx else 0.0

        queue = [w for ws in self._stages for w in sorted(ws, key=lambda w: (mean_context(w), rank[w]))]
        queue += [w for w in order if w not in self._where]  # none while the invariant holds
        queues: dict[int, list[str]] = {}
        for w in queue:
            queues.setdefault(class_of[w], []).append(w)
        start = dict.fromkeys(queues, 0)
        out = []
        for c, k in zip(classes, counts, strict=True):
            out.append(queues[c][start[c] : start[c] + k])
            start[c] += k
        return out

    # Balance.
    def _diffuse(self, now: float) -> None:
        """Move each boundary on its two stages' transient load (see the module doc)."""
        k_count = len(self._stages)
        if k_count < 2:
            return
        if self._short is None or self._long is None:
            self._short, self._long = [(0.0, 0.0)] * k_count, [(0.0, 0.0)] * k_count
            dt = 0.0
        else:
            dt = max(now - self._last_smooth, 0.0)
        self._last_smooth = now
        interval = max(self.config.refine_interval_s, 1e-9)
        short_keep = math.exp(-dt / interval)
        long_keep = math.exp(-dt * math.log(2) / self.config.decay_half_life_s)
        ratio: list[float | None] = []
        for k in range(k_count):
            ws = self._healthy(k)
            if not ws:
                ratio.append(None)
                continue
            x = sum(self._work(w) for w in ws) / len(ws)
            # Exponential averages as (weighted sum, weight): unbiased from the first sample.
            (s, sw), (lg, lw) = self._short[k], self._long[k]
            self._short[k] = (s * short_keep + x, sw * short_keep + 1)
            self._long[k] = (lg * long_keep + x, lw * long_keep + 1)
            mean_short = self._short[k][0] / self._short[k][1]
            mean_long = self._long[k][0] / self._long[k][1]
            ratio.append(mean_short / mean_long if mean_long > 0 else None)
        span = float(self._edges[2] / self._edges[1]) ** DIFFUSION_SPAN_BINS
        for k in range(k_count - 1):
            lower, upper = ratio[k], ratio[k + 1]
            if lower is None or upper is None:
                continue
            b = self._bounds[k]
            lo = self._bounds[k - 1] if k > 0 else 0.0
            hi = self._bounds[k + 1] if k + 1 < len(self._bounds) else float(self._edges[-1])
            if self._plan_bounds is not None and len(self._plan_bounds) == len(self._bounds):
                plan = self._plan_bounds
                lo = max(lo, plan[k] / span, math.sqrt(plan[k - 1] * plan[k]) if k > 0 else 0.0)
                hi = min(hi, plan[k] * span, math.sqrt(plan[k] * plan[k + 1]) if k + 1 < len(plan) else hi)
            if not lo < b < hi:
                continue
            moved = diffuse_boundary(
                b, lower, upper, lo, hi, self.config.diffusion_rate, self.config.diffusion_deadband
            )
            # A move across an empty range shifts no load: it would only drift and churn the layout.
            if moved != b and not self._empty_between(b, moved):
                self._bounds[k] = moved
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
