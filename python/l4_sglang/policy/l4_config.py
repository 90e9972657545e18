"""L4's knobs (`L4Config`) and the record of one DP run (`Refinement`).

docs/l4.md explains what each knob steers.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from l4_sglang.core import QoeConfig
from l4_sglang.policy.base import PolicyConfig, check_config, finite

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
    overload_horizon_s: float = _knob(
        60.0,
        "seconds the DP prices an overloaded stage's growing backlog over (0: an overloaded stage "
        "is infeasible, so a transient overload pools stages)",
    )
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
            "overload_horizon_s": at_least_0,
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
        fields = (self.slo_ttft_s, self.slo_tpot_s, self.slo_penalty_s, self.max_utilization)
        return QoeConfig(*fields, self.overload_horizon_s)


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
