"""The suite's workloads, loads and policies, its run settings, and each workload's base trace
(`python -m l4_sglang.bench suite`; the module docstring of `bench/suite.py` says what they mean)."""

from __future__ import annotations

from dataclasses import dataclass
from functools import cache
from pathlib import Path

from l4_sglang.bench.cli import ORACLE
from l4_sglang.bench.trace_files import REAL_TRACES
from l4_sglang.core import CostModel
from l4_sglang.workload import SYNTHETIC_KINDS, load_trace, synthetic_trace, truncate
from l4_sglang.workload.synthetic import shifting_phases
from l4_sglang.workload.trace import Trace

WORKLOADS = (*REAL_TRACES, *SYNTHETIC_KINDS)
NONSTATIONARY = ("nonstationary",)
LOADS = {"light": 0.5, "knee": 1.0, "past": 1.5}
"""Load name -> multiple of round robin's knee."""
SYNTH_BASE_RATE = 10.0
"""Requests per second the synthetic workloads are generated at (nonstationary: its chat phases)."""
LENGTH_BLIND = ("round_robin", "least_load", "power_of_two", "llumnix")
SUITE_POLICIES = ("l4", *LENGTH_BLIND, "static_buckets", ORACLE)


@dataclass(frozen=True)
class Settings:
    instances: int
    seeds: list[int]
    loads: list[str]
    workloads: list[str]
    policies: list[str]
    requests: int
    nonstationary_requests: int
    traces_dir: Path
    cost_model: str
    knee_steps: int
    oracle_buckets: int
    knobs: dict[str, dict]
    quiet: bool

    @property
    def model(self) -> CostModel:
        return _load_model(self.cost_model)


@cache
def _load_model(spec: str) -> CostModel:
    return CostModel.load(spec)


def base_trace(workload: str, seed: int, s: Settings) -> Trace:
    """The workload's trace at rate scale 1: first --requests requests, or about that many generated
    (--nonstationary-requests for the non-stationary mix)."""
    if workload in REAL_TRACES:
        trace = load_trace(s.traces_dir / REAL_TRACES[workload], seed=seed)
        return truncate(trace, count=s.requests)
    if workload in NONSTATIONARY:
        per_s = sum(ph.rate * ph.duration_s for ph in shifting_phases(SYNTH_BASE_RATE, 3.0)) / 3.0
        return synthetic_trace(workload, SYNTH_BASE_RATE, s.nonstationary_requests / per_s, seed=seed)
    trace = synthetic_trace(workload, SYNTH_BASE_RATE, s.requests / SYNTH_BASE_RATE, seed=seed)
    return truncate(trace, count=s.requests)
