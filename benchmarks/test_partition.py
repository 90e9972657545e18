"""Benchmarks of the DP partitioner: the Rust core against the Python reference.

Run with `python -m pytest benchmarks/ --benchmark-enable --benchmark-only`
(pyproject's addopts disables benchmarks by default). Workloads come from the
Mooncake conversation trace, binned with `log_bin_edges(B)` and scaled so that
one stage on all N instances sits at a fixed utilization: 65% (moderate) or
15% (light). Every case checks Rust == reference (1e-9 relative) outside the
timed part. The mixed cases split N into N/2 of the H100 model above and N/2
of llama3-8b-h200-flashinfer (`partition_classes`, two instance classes),
checked against the reference class DP at N = 16.
"""

from __future__ import annotations

import functools
import math
import os

import numpy as np
import pytest
import reference_partition as ref

import l4_sglang
from l4_sglang import (
    CostModel,
    QoeConfig,
    Workload,
    evaluate_layout,
    log_bin_edges,
    partition,
    partition_classes,
)
from l4_sglang.bench.suite import trace_path
from l4_sglang.workload import load_mooncake, truncate

if l4_sglang.BUILD_PROFILE != "release":
    pytest.exit(
        f"benchmarks refuse a {l4_sglang.BUILD_PROFILE!r} build of l4_sglang._core: "
        "install a release build (pip install .) first",
        returncode=1,
    )

MOONCAKE = trace_path(os.environ.get("L4_TRACES_DIR"), "mooncake_conversation")
"""The bench suite's lookup: $L4_TRACES_DIR, else its default traces folder (`default_traces_dir`)."""
REQUESTS = 4000

MODEL = CostModel.load("llama3-8b-h100-default")
PARAMS = MODEL.params
QOE = QoeConfig()

MODERATE = 0.65
LIGHT = 0.15
SIZES = [(16, 32), (64, 128), (256, 128)]
# Timed rounds of the reference: one where a run takes seconds (on 2 cores,
# about 0.3 s at (16, 32), 6 s at (64, 128), 8 s at (256, 128): all under the
# 2-minute budget, so no reference case is skipped).
REFERENCE_ROUNDS = {(16, 32): 5, (64, 128): 1, (256, 128): 1}


def close(a: float, b: float) -> bool:
    return math.isclose(a, b, rel_tol=1e-9, abs_tol=1e-12)


@functools.cache
def trace() -> tuple[np.ndarray, np.ndarray, float]:
    if not MOONCAKE.is_file():
        pytest.fail(
            f"Mooncake trace not found at {MOONCAKE} (set L4_TRACES_DIR): the benchmarks are built from it"
        )
    first = truncate(load_mooncake(MOONCAKE), count=REQUESTS)
    arrivals = first.arrivals()
    return first.prompt_lengths(), first.output_lengths(), float(arrivals[-1] - arrivals[0])


@functools.cache
def workload(instances: int, bins: int, utilization: float) -> Workload:
    """The trace's mix at the rate where one stage on all instances runs at `utilization`."""
    prompt, output, duration = trace()
    base = Workload.from_requests(prompt, output, duration, log_bin_edges(bins))
    one = evaluate_layout(MODEL, base, [0, bins], [instances], QOE).stages[0].utilization
    scaled = base.scaled(utilization / one)
    check = evaluate_layout(MODEL, scaled, [0, bins], [instances], QOE).stages[0].utilization
    assert math.isclose(check, utilization, rel_tol=1e-9)
    return scaled


_reference_totals: dict[tuple[int, int, float], float] = {}


def reference_total(instances: int, bins: int, utilization: float) -> float:
    key = (instances, bins, utilization)
    if key not in _reference_totals:
        w = workload(instances, bins, utilization)
        _reference_totals[key] = ref.reference_partition(PARAMS, w, instances, QOE)[0]
    return _reference_totals[key]


def size_id(size: tuple[int, int]) -> str:
    return f"N{size[0]}-B{size[1]}"


@pytest.mark.benchmark(group="partition")
@pytest.mark.parametrize(("instances", "bins"), SIZES, ids=[size_id(s) for s in SIZES])
def test_reference_moderate(benchmark, instances, bins):
    w = workload(instances, bins, MODERATE)
    total, layout = benchmark.pedantic(
        ref.reference_partition,
        args=(PARAMS, w, instances, QOE),
        rounds=REFERENCE_ROUNDS[(instances, bins)],
        iterations=1,
    )
    benchmark.extra_info.update(impl="reference", instances=instances, bins=bins, utilization=MODERATE)
    got = partition(MODEL, w, instances, QOE)
    assert got.feasible and math.isfinite(total)
    assert close(got.total_cost, total), (got.total_cost, total, layout)
    _reference_totals[(instances, bins, MODERATE)] = total


@pytest.mark.benchmark(group="partition")
@pytest.mark.parametrize(("instances", "bins"), SIZES, ids=[size_id(s) for s in SIZES])
def test_rust_moderate(benchmark, instances, bins):
    _bench_rust(benchmark, instances, bins, MODERATE)


@pytest.mark.benchmark(group="partition")
def test_rust_light(benchmark):
    _bench_rust(benchmark, 64, 128, LIGHT)


def _bench_rust(benchmark, instances: int, bins: int, utilization: float) -> None:
    """The Rust DP timed on one case, after checking it against the reference's total."""
    w = workload(instances, bins, utilization)
    got = partition(MODEL, w, instances, QOE)
    want = reference_total(instances, bins, utilization)
    assert got.feasible and close(got.total_cost, want), (got.total_cost, want)
    benchmark.extra_info.update(impl="rust", instances=instances, bins=bins, utilization=utilization)
    benchmark(partition, MODEL, w, instances, QOE)


H200 = CostModel.load("llama3-8b-h200-flashinfer")
MIXED_SIZES = [(16, 32), (64, 32), (64, 128)]


@pytest.mark.benchmark(group="partition-mixed")
@pytest.mark.parametrize(("instances", "bins"), MIXED_SIZES, ids=[size_id(s) for s in MIXED_SIZES])
def test_rust_mixed_moderate(benchmark, instances, bins):
    w = workload(instances, bins, MODERATE)
    classes = [(MODEL, instances // 2), (H200, instances // 2)]
    got = partition_classes(classes, w, QOE)
    assert got.feasible and sorted(set(got.classes)) == [0, 1]
    if instances <= 16:
        params = [(PARAMS, instances // 2), (H200.params, instances // 2)]
        want, _ = ref.reference_partition_classes(params, w, QOE)
        assert close(got.total_cost, want), (got.total_cost, want)
    benchmark.extra_info.update(impl="rust-mixed", instances=instances, bins=bins, utilization=MODERATE)
    benchmark(partition_classes, classes, w, QOE)
