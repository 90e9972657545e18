"""Typed Python face of the Rust core (`l4_sglang._core`).

This is the only module that imports `_core`; policies, the router and the
simulator call these wrappers. Inputs are checked here for shape and type so
that errors name the field; the Rust side checks the values again.

It is longer than the ~500 lines the other modules keep to, on purpose: one
checked wrapper per Rust entry point (cost model, partition, layouts,
placement, migration), and keeping them in the one module that touches
`_core` keeps that boundary in one place.
"""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from importlib import resources
from pathlib import Path

import numpy as np

from l4_sglang import _core

DEFAULT_COST_MODEL = "llama3-8b-h100-flashinfer"
"""Fitted on SGLang 0.5.14 (H100, FlashInfer): the emulated workers' timing and the policies'
prices by default. `llama3-8b-h100-default` is an unfitted prior, kept for comparisons."""
BUILD_PROFILE: str = _core.build_profile


def available_cost_models() -> list[str]:
    """Names of the calibrations shipped in the package."""
    folder = resources.files("l4_sglang") / "data" / "costmodels"
    return sorted(p.name.removesuffix(".json") for p in folder.iterdir() if p.name.endswith(".json"))


class CostModel:
    """Step-time model of one engine iteration (see rust/src/cost_model.rs)."""

    def __init__(self, core: _core.CostModel):
        self._core = core

    @classmethod
    def load(cls, name_or_path: str | Path = DEFAULT_COST_MODEL) -> CostModel:
        """A shipped calibration by name, or a JSON file by path."""
        path = Path(name_or_path)
        if path.suffix == ".json" or path.exists():
            if not path.is_file():
                raise ValueError(f"invalid cost_model: no file at {path}")
            return cls.from_json(path.read_text())
        name = str(name_or_path)
        if name not in available_cost_models():
            raise ValueError(
                f"invalid cost_model: unknown name {name!r}; shipped: {', '.join(available_cost_models())}"
            )
        text = (resources.files("l4_sglang") / "data" / "costmodels" / f"{name}.json").read_text()
        return cls.from_json(text)

    @classmethod
    def from_json(cls, text: str) -> CostModel:
        return cls(_core.CostModel.from_json(text))

    @property
    def name(self) -> str:
        return self._core.name

    @property
    def params(self) -> dict:
        return json.loads(self._core.to_json())

    def to_json(self) -> str:
        return self._core.to_json()

    def without_heterogeneity(self) -> CostModel:
        """The same model with the length-mix term off (het_alpha = 0)."""
        return CostModel(self._core.without_heterogeneity())

    def step_time(self, batch: Sequence[tuple[int, int]]) -> float:
        """Seconds for one step running `batch` of (new_tokens, context) items."""
        items = [(int(n), int(c)) for n, c in batch]
        if any(n < 0 or c < 0 for n, c in items):
            raise ValueError("invalid batch: new_tokens and context must be >= 0")
        return self._core.step_time(items)

    def prefill_time(self, prompt_tokens: float) -> float:
        return self._core.prefill_time(float(prompt_tokens))

    def decode_step_time(self, requests: float, kv_tokens: float, max_kv: float) -> float:
        return self._core.decode_step_time(float(requests), float(kv_tokens), float(max_kv))

    def decode_throughput(self, requests: float, mean_kv: float, max_kv: float) -> float:
        return self._core.decode_throughput(float(requests), float(mean_kv), float(max_kv))

    def max_concurrency(self, mean_kv: float) -> float:
        return self._core.max_concurrency(float(mean_kv))

    def decode_operating_point(
        self, rate: float, busy: float, mean_kv: float, max_kv: float
    ) -> tuple[float, float] | None:
        """(batch size, step seconds) at which `rate` tokens/s are delivered, or None."""
        return self._core.decode_operating_point(float(rate), float(busy), float(mean_kv), float(max_kv))

    def __repr__(self) -> str:
        return f"CostModel({self.name!r})"


def log_bin_edges(bins: int, max_tokens: float = 131072, min_tokens: float = 16) -> np.ndarray:
    """`bins + 1` edges: 0, then log-spaced from `min_tokens` to `max_tokens`."""
    if bins < 1:
        raise ValueError(f"invalid bins: must be >= 1, got {bins}")
    if not (0 < min_tokens < max_tokens) or not math.isfinite(max_tokens):
        raise ValueError(f"invalid min_tokens/max_tokens: need 0 < {min_tokens} < {max_tokens} < inf")
    if bins == 1:
        return np.array([0.0, float(max_tokens)])
    return np.concatenate([[0.0], np.geomspace(min_tokens, max_tokens, bins)])


def _as_bins(field: str, values, n: int) -> np.ndarray:
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as e:
        raise ValueError(f"invalid {field}: not a sequence of numbers ({e})") from None
    if arr.shape != (n,):
        raise ValueError(f"invalid {field}: has shape {arr.shape}, expected ({n},) (one value per bin)")
    return arr


@dataclass(frozen=True)
class Workload:
    """Per-bin load the DP partitions (see rust/src/partition.rs for each field)."""

    edges: np.ndarray
    arrival_rate: np.ndarray
    prompt_tokens: np.ndarray
    decode_rate: np.ndarray
    decode_context: np.ndarray
    growth_rate: np.ndarray

    def __post_init__(self):
        try:
            edges = np.asarray(self.edges, dtype=np.float64)
        except (TypeError, ValueError) as e:
            raise ValueError(f"invalid edges: not a sequence of numbers ({e})") from None
        if edges.ndim != 1 or edges.size < 2:
            raise ValueError("invalid edges: needs a 1-D sequence of at least 2 edges (1 bin)")
        object.__setattr__(self, "edges", edges)
        n = edges.size - 1
        for field in ("arrival_rate", "prompt_tokens", "decode_rate", "decode_context", "growth_rate"):
            object.__setattr__(self, field, _as_bins(field, getattr(self, field), n))

    @property
    def bins(self) -> int:
        return self.edges.size - 1

    def _args(self) -> tuple[list[float], list[float], list[float], list[float], list[float], list[float]]:
        return (
            self.edges.tolist(),
            self.arrival_rate.tolist(),
            self.prompt_tokens.tolist(),
            self.decode_rate.tolist(),
            self.decode_context.tolist(),
            self.growth_rate.tolist(),
        )

    @classmethod
    def from_requests(
        cls, prompt_tokens: Sequence[float], output_tokens: Sequence[float], duration_s: float, edges
    ) -> Workload:
        """Histogram of a request list observed over `duration_s` seconds.

        A request of prompt p and output o decodes o tokens at contexts
        p, p+1, ..., p+o-1; each bin gets the tokens whose context falls in it,
        and each edge inside (p, p+o-1] counts one growth crossing.
        """
        edges = np.asarray(edges, dtype=np.float64)
        p = np.asarray(prompt_tokens, dtype=np.float64)
        o = np.asarray(output_tokens, dtype=np.float64)
        if p.shape != o.shape or p.ndim != 1:
            raise ValueError("invalid prompt_tokens/output_tokens: need two 1-D sequences of equal length")
        if np.any(p < 0) or np.any(o < 0) or not (np.all(np.isfinite(p)) and np.all(np.isfinite(o))):
            raise ValueError("invalid prompt_tokens/output_tokens: must be finite and >= 0")
        if not (math.isfinite(duration_s) and duration_s > 0):
            raise ValueError(f"invalid duration_s: must be finite and > 0, got {duration_s}")
        n = edges.size - 1
        top = edges[-1]
        p = np.minimum(p, np.nextafter(top, 0))
        last = np.minimum(p + np.maximum(o, 1) - 1, np.nextafter(top, 0))
        arrival_bin = np.clip(np.searchsorted(edges, p, side="right") - 1, 0, n - 1)
        count = np.bincount(arrival_bin, minlength=n).astype(np.float64)
        prompt_sum = np.bincount(arrival_bin, weights=p, minlength=n)
        decoding = o > 0
        # Tokens decoded with context in [lo, hi) for each request, per bin.
        lo = np.maximum(edges[:-1][None, :], p[decoding, None])
        hi = np.minimum(edges[1:][None, :], last[decoding, None] + 1)
        span = np.clip(hi - lo, 0, None)
        tokens = span.sum(axis=0)
        ctx_sum = (span * (lo + hi - 1) / 2).sum(axis=0)
        crossings = (edges[None, 1:-1] > p[decoding, None]) & (edges[None, 1:-1] <= last[decoding, None])
        growth = np.concatenate([[0.0], crossings.sum(axis=0).astype(np.float64)])
        with np.errstate(invalid="ignore", divide="ignore"):
            mean_prompt = np.where(count > 0, prompt_sum / np.maximum(count, 1), 0.0)
            # A mean of values inside a bin is inside it; clip away rounding.
            mean_prompt = np.where(count > 0, np.clip(mean_prompt, edges[:-1], edges[1:]), 0.0)
            mean_ctx = np.where(tokens > 0, ctx_sum / np.maximum(tokens, 1), 0.0)
        return cls(
            edges=edges,
            arrival_rate=count / duration_s,
            prompt_tokens=mean_prompt,
            decode_rate=tokens / duration_s,
            decode_context=mean_ctx,
            growth_rate=growth / duration_s,
        )

    def scaled(self, factor: float) -> Workload:
        """The same mix at `factor` times the rate."""
        return Workload(
            self.edges,
            self.arrival_rate * factor,
            self.prompt_tokens,
            self.decode_rate * factor,
            self.decode_context,
            self.growth_rate * factor,
        )


@dataclass(frozen=True)
class QoeConfig:
    """What the DP optimises; see the README's "QoE" section."""

    slo_ttft_s: float = 2.0
    slo_tpot_s: float = 0.1
    slo_penalty_s: float = 100.0
    max_utilization: float = 0.9
    overload_horizon_s: float = 0.0
    """Seconds an overloaded stage's backlog is priced over; 0: an overloaded stage is
    infeasible (the DP avoids it while any layout can)."""

    def _args(self) -> tuple[float, float, float, float, float]:
        return tuple(_as_number(f, getattr(self, f)) for f in QOE_FIELDS)  # type: ignore[return-value]


QOE_FIELDS = ("slo_ttft_s", "slo_tpot_s", "slo_penalty_s", "max_utilization", "overload_horizon_s")


def _as_number(field: str, value) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, np.integer, np.floating)):
        raise ValueError(f"invalid {field}: must be a number, got {value!r}")
    return float(value)


@dataclass(frozen=True)
class Stage:
    first_bin: int
    end_bin: int
    lo_tokens: float
    hi_tokens: float
    instances: int
    arrival_rate: float
    migration_in_rate: float
    decode_rate: float
    utilization: float
    prefill_utilization: float
    mean_ttft_s: float
    tpot_s: float
    latency_rate: float
    violation_rate: float
    cost: float
    feasible: bool
    class_index: int = 0
    """Which instance class the stage runs on (`partition_classes`); 0 with one class."""


@dataclass(frozen=True)
class Layout:
    """A stage layout and its predicted QoE."""

    stages: tuple[Stage, ...]
    total_cost: float
    mean_e2e_s: float
    ttft_attainment: float
    tpot_attainment: float
    feasible: bool
    excess_work: float

    @classmethod
    def _from_core(cls, d: dict) -> Layout:
        stages = tuple(Stage(**s) for s in d.pop("stages"))
        return cls(stages=stages, **d)

    @property
    def boundaries(self) -> list[float]:
        """Token boundaries between stages (K - 1 values)."""
        return [s.lo_tokens for s in self.stages[1:]]

    @property
    def instances(self) -> list[int]:
        return [s.instances for s in self.stages]

    @property
    def classes(self) -> list[int]:
        """Instance class of each stage (all 0 for a one-class layout)."""
        return [s.class_index for s in self.stages]

    def to_dict(self) -> dict:
        return asdict(self)


def _check_instances(instances: int) -> int:
    if isinstance(instances, bool) or not isinstance(instances, (int, np.integer)):
        raise ValueError(f"invalid instances: must be an integer, got {instances!r}")
    if instances < 1:
        raise ValueError(f"invalid instances: must be >= 1, got {instances}")
    return int(instances)


def partition(model: CostModel, workload: Workload, instances: int, qoe: QoeConfig | None = None) -> Layout:
    """The best stage layout of `instances` instances for `workload` (exact DP)."""
    qoe = qoe or QoeConfig()
    d = _core.partition(model._core, workload._args(), _check_instances(instances), qoe._args())
    return Layout._from_core(d)


def evaluate_layout(
    model: CostModel,
    workload: Workload,
    cuts: Sequence[int],
    instances: Sequence[int],
    qoe: QoeConfig | None = None,
) -> Layout:
    """Price a given layout: stage s covers bins [cuts[s], cuts[s+1]) on instances[s]."""
    qoe = qoe or QoeConfig()
    if len(instances) > 0 and len(cuts) - 1 > sum(int(i) for i in instances):
        raise ValueError(
            f"invalid instances: {len(cuts) - 1} stages need at least {len(cuts) - 1} instances, "
            f"got {sum(int(i) for i in instances)}"
        )
    d = _core.evaluate_layout(
        model._core, workload._args(), [int(c) for c in cuts], [int(i) for i in instances], qoe._args()
    )
    return Layout._from_core(d)


def merge_stages(
    model: CostModel, workload: Workload, layout: Layout, stage_gain: float, qoe: QoeConfig | None = None
) -> Layout:
    """`layout` with neighbour stages merged, the cheapest merge first, while a merge raises the
    predicted cost by at most `stage_gain` of it (every stage must earn its keep; the DP's fluid
    queueing sees no loss of pooling in small stages). Infeasible layouts come back as given."""
    qoe = qoe or QoeConfig()
    cuts = [0, *(s.end_bin for s in layout.stages)]
    d = _core.merge_stages(
        model._core, workload._args(), cuts, list(layout.instances), qoe._args(), float(stage_gain)
    )
    return Layout._from_core(d)


MAX_CLASSES = 3
"""Most instance classes `partition_classes` takes (its DP state is their product)."""


@dataclass(frozen=True)
class InstanceClass:
    """`count` identical instances running on cost model `model` (one class of a mixed pool)."""

    model: CostModel
    count: int


def _check_classes(classes: Sequence[InstanceClass | tuple[CostModel, int]]) -> list[InstanceClass]:
    if isinstance(classes, (str, bytes)) or not isinstance(classes, Sequence):
        raise ValueError(f"invalid classes: must be a sequence of (CostModel, count), got {classes!r}")
    out = []
    for i, c in enumerate(classes):
        if not isinstance(c, InstanceClass):
            try:
                model, count = c
            except (TypeError, ValueError):
                raise ValueError(f"invalid classes[{i}]: must be (CostModel, count), got {c!r}") from None
            c = InstanceClass(model, count)
        if not isinstance(c.model, CostModel):
            raise ValueError(f"invalid classes[{i}].model: must be a CostModel, got {c.model!r}")
        if isinstance(c.count, bool) or not isinstance(c.count, (int, np.integer)) or c.count < 1:
            raise ValueError(f"invalid classes[{i}].count: must be an integer >= 1, got {c.count!r}")
        out.append(InstanceClass(c.model, int(c.count)))
    if not out:
        raise ValueError("invalid classes: needs at least one class")
    return out


def partition_classes(
    classes: Sequence[InstanceClass | tuple[CostModel, int]],
    workload: Workload,
    qoe: QoeConfig | None = None,
) -> Layout:
    """The best layout of a mixed pool, each stage on instances of one class (exact DP).

    `classes` lists (cost model, count) pairs, at most `MAX_CLASSES`; a stage's
    `class_index` says which one it runs on. With one class this is `partition`.
    """
    qoe = qoe or QoeConfig()
    checked = _check_classes(classes)
    d = _core.partition_classes(
        [c.model._core for c in checked], [c.count for c in checked], workload._args(), qoe._args()
    )
    return Layout._from_core(d)


def evaluate_layout_classes(
    classes: Sequence[InstanceClass | tuple[CostModel, int]],
    workload: Workload,
    cuts: Sequence[int],
    instances: Sequence[int],
    stage_classes: Sequence[int],
    qoe: QoeConfig | None = None,
) -> Layout:
    """Price a mixed layout: stage s covers bins [cuts[s], cuts[s+1]) on instances[s]
    instances of class stage_classes[s]; every class's instances are used exactly."""
    qoe = qoe or QoeConfig()
    checked = _check_classes(classes)
    if any(int(i) < 0 for i in instances):
        raise ValueError("invalid instances: counts must be >= 0")
    if any(int(c) < 0 for c in stage_classes):
        raise ValueError("invalid stage_classes: class indices must be >= 0")
    d = _core.evaluate_layout_classes(
        [c.model._core for c in checked],
        [c.count for c in checked],
        workload._args(),
        [int(c) for c in cuts],
        [int(i) for i in instances],
        [int(c) for c in stage_classes],
        qoe._args(),
    )
    return Layout._from_core(d)


@dataclass(frozen=True)
class InstanceLoad:
    """What the router knows of one instance (see rust/src/balance.rs)."""

    running: float = 0.0
    kv_tokens: float = 0.0
    max_kv: float = 0.0
    queued_requests: float = 0.0
    queued_tokens: float = 0.0
    mean_remaining: float = 0.0

    def _tuple(self) -> tuple[float, float, float, float, float, float]:
        return (
            float(self.running),
            float(self.kv_tokens),
            float(self.max_kv),
            float(self.queued_requests),
            float(self.queued_tokens),
            float(self.mean_remaining),
        )


@dataclass(frozen=True)
class Migration:
    request: int
    source: int
    target: int
    gain_s: float
    cost_s: float


def predicted_work(model: CostModel, load: InstanceLoad, horizon_steps: float = 100.0) -> float:
    return _core.predicted_work(model._core, load._tuple(), float(horizon_steps))


def _per_instance(model: CostModel | Sequence[CostModel], instances: int) -> list:
    """The core model of each instance: `model` for all, or one per instance (checked)."""
    if isinstance(model, CostModel):
        return [model._core] * instances
    models = list(model)
    if len(models) != instances or not all(isinstance(m, CostModel) for m in models):
        raise ValueError(f"invalid model: needs one CostModel or {instances} of them (one per instance)")
    return [m._core for m in models]


def pick_instance(
    model: CostModel | Sequence[CostModel],
    loads: Sequence[InstanceLoad],
    candidates: int = 2,
    horizon_steps: float = 100.0,
    seed: int = 0,
) -> int:
    """Index of the least-loaded of `candidates` instances sampled with `seed`.

    `model` is one cost model for every instance, or one per instance (a mixed
    pool): each instance's predicted work is then priced with its own model.
    """
    if candidates < 1:
        raise ValueError(f"invalid candidates: must be >= 1, got {candidates}")
    tuples = [x._tuple() for x in loads]
    args = (tuples, int(candidates), float(horizon_steps), int(seed) % 2**64)
    return _core.pick_instance_models(_per_instance(model, len(tuples)), *args)


def pick_marginal(
    model: CostModel | Sequence[CostModel],
    loads: Sequence[InstanceLoad],
    prompt_tokens: float,
    horizon_steps: float = 100.0,
) -> int:
    """Index of the instance where a request of `prompt_tokens` adds the least request-seconds:
    its wait and prefill, and over `horizon_steps` decode steps its own step plus the slowdown of
    the batch it joins (length-mix term included). `model`: one for all, or one per instance."""
    tuples = [x._tuple() for x in loads]
    models = _per_instance(model, len(tuples))
    return _core.pick_marginal(models, tuples, float(prompt_tokens), float(horizon_steps))


def diffuse_boundary(
    boundary: float,
    lower_load: float,
    upper_load: float,
    min_tokens: float,
    max_tokens: float,
    rate: float = 0.25,
    deadband: float = 0.1,
) -> float:
    """Boundary between two neighbour stages after one diffusion step."""
    return _core.diffuse_boundary(
        float(boundary),
        float(lower_load),
        float(upper_load),
        float(min_tokens),
        float(max_tokens),
        float(rate),
        float(deadband),
    )


def move_value(
    model: CostModel,
    context: float,
    remaining: float,
    source: InstanceLoad,
    source_after: InstanceLoad,
    target: InstanceLoad,
    target_model: CostModel | None = None,
) -> tuple[float, float]:
    """(gain_s, cost_s) of moving one running request between instances.

    `model` prices the source; `target_model` (default: `model`) the target
    and the recompute there.
    """
    return _core.move_value(
        model._core,
        float(context),
        float(remaining),
        source._tuple(),
        source_after._tuple(),
        target._tuple(),
        None if target_model is None else target_model._core,
    )


def pick_migration(
    model: CostModel | Sequence[CostModel],
    loads: Sequence[InstanceLoad],
    requests: Sequence[Sequence[tuple[int, float, float]]],
    min_gap: float = 0.2,
    margin: float = 1.0,
    horizon_steps: float = 100.0,
) -> Migration | None:
    """The request to move from the busiest to the idlest instance, if it pays.

    `model` is one cost model or one per instance, as for `pick_instance`.
    """
    lists = [[(int(i), float(c), float(r)) for i, c, r in reqs] for reqs in requests]
    if any(i < 0 for reqs in lists for i, _, _ in reqs):
        raise ValueError("invalid requests: request ids must be >= 0")
    tuples = [x._tuple() for x in loads]
    args = (tuples, lists, float(min_gap), float(margin), float(horizon_steps))
    found = _core.pick_migration_models(_per_instance(model, len(tuples)), *args)
    return Migration(**found) if found is not None else None
