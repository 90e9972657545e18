"""Round robin's knee of a workload, the unit of the suite's loads (`bench/suite.py`'s docstring):
the rate scale at which its mean E2E reaches `KNEE_RATIO` times the mean oracle E2E."""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np

from l4_sglang.bench.cli import oracle_e2e_s
from l4_sglang.bench.suite_config import LOADS, Settings
from l4_sglang.core import CostModel
from l4_sglang.sim import simulate
from l4_sglang.workload import scale_rate
from l4_sglang.workload.trace import Trace

KNEE_RATIO = 2.0
"""Round robin's mean E2E over the mean oracle E2E at its knee."""
LOAD_RULE = (
    f"multiples of round robin's knee, the rate scale at which its mean E2E reaches {KNEE_RATIO:g}x the "
    "mean oracle E2E (each request alone on an idle instance) on the first seed's trace, found by a doubling/"
    "halving bracket, log bisections and log-linear interpolation; "
    + ", ".join(f"{k} = {v:g}x knee" for k, v in LOADS.items())
    + "."
)


def mean_oracle_s(trace: Trace, model: CostModel) -> float:
    return float(np.mean([oracle_e2e_s(model, max(r.prompt_tokens, 1), r.output_tokens) for r in trace]))


class KneeNotFound(RuntimeError):
    pass


def find_knee(trace: Trace, s: Settings, log: Callable[[str], None]) -> dict:
    """Round robin's knee on `trace` (see the module docstring): the scale and the points swept."""
    ref = mean_oracle_s(trace, s.model)
    points: dict[float, float] = {}

    def ratio(scale: float) -> float:
        if scale not in points:
            res = simulate(scale_rate(trace, scale), "round_robin", s.model, s.instances, seed=s.seeds[0])
            e2e = [r.e2e_s for r in res.completed]
            points[scale] = float(np.mean(e2e)) / ref if e2e else math.inf
            log(f"rate scale {scale:.4g}: round_robin mean E2E {points[scale]:.3g}x oracle")
        return points[scale]

    lo, hi = None, None
    scale = 1.0
    for _ in range(16):
        if ratio(scale) < KNEE_RATIO:
            lo = scale
            if hi is not None:
                break
            scale *= 2
        else:
            hi = scale
            if lo is not None:
                break
            scale /= 2
    if lo is None or hi is None:
        top = max(points, key=points.get)
        raise KneeNotFound(
            f"no knee: round robin's mean E2E never reached {KNEE_RATIO:g}x the oracle's (at most "
            f"{points[top]:.3g}x, at rate scale {top:g}); a trace this small fits in the batches of "
            f"{s.instances} instances even when it arrives at once: use more --requests"
        )
    for _ in range(s.knee_steps):
        mid = math.sqrt(lo * hi)
        if ratio(mid) < KNEE_RATIO:
            lo = mid
        else:
            hi = mid
    flo, fhi = points[lo], points[hi]
    if math.isfinite(fhi) and fhi > flo:
        w = (KNEE_RATIO - flo) / (fhi - flo)
        knee = math.exp(math.log(lo) + w * (math.log(hi) - math.log(lo)))
    else:
        knee = math.sqrt(lo * hi)
    return {
        "scale": knee,
        "rate_req_s": knee * trace.mean_rate,
        "mean_oracle_e2e_s": ref,
        "sweep": [{"scale": k, "rr_e2e_over_oracle": v} for k, v in sorted(points.items())],
    }
