"""Request workloads: real traces (Mooncake, Azure), transformations, synthetic generators."""

from l4_sglang.workload.azure import load_azure
from l4_sglang.workload.mooncake import load_mooncake, write_mooncake
from l4_sglang.workload.synthetic import (
    STATIONARY_KINDS,
    SYNTHETIC_KINDS,
    LengthMixture,
    Phase,
    gamma,
    phased,
    poisson,
    synthetic_trace,
)
from l4_sglang.workload.trace import Trace, TraceRequest
from l4_sglang.workload.transform import cap_lengths, load_trace, scale_rate, truncate

__all__ = [
    "STATIONARY_KINDS",
    "SYNTHETIC_KINDS",
    "LengthMixture",
    "Phase",
    "Trace",
    "TraceRequest",
    "cap_lengths",
    "gamma",
    "load_azure",
    "load_mooncake",
    "load_trace",
    "phased",
    "poisson",
    "scale_rate",
    "synthetic_trace",
    "truncate",
    "write_mooncake",
]
