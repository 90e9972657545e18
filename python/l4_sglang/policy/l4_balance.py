"""L4's boundary diffusion: between DP runs, each boundary drifts toward the stage whose load runs
above its usual level (docs/l4.md, "Balance").

The state is two exponential averages of each stage's predicted work per worker: a short one (over
`refine_interval_s`) and a long one (over `decay_half_life_s`). Their ratio is a stage's transient
load; only departures from its usual load move a boundary, since the DP chose unequal loads on
purpose and a cost model's absolute numbers may be off for a real engine. A boundary hands over at
most half the relative imbalance's worth of the sending stage's traffic, counted from where the DP
put it: on a bimodal mix, a boundary that walks into the short mode would otherwise hand most of
the short stage's requests to the long one.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

from l4_sglang.core import diffuse_boundary

CAP_BISECTIONS = 20
"""Halvings (in log space) of a capped diffusion step: 2^-20 of the step's span."""


class BoundaryDiffusion:
    def __init__(self, refine_interval_s: float, half_life_s: float, rate: float, deadband: float):
        self._interval = max(refine_interval_s, 1e-9)
        self._half_life = half_life_s
        self._rate, self._deadband = rate, deadband
        self._short: list[tuple[float, float]] | None = None
        self._long: list[tuple[float, float]] | None = None
        self._last = 0.0

    def reset(self) -> None:
        """Forget the averages (the stages changed)."""
        self._short = self._long = None

    def _ratios(self, work: Sequence[float | None], now: float) -> list[float | None]:
        """Each stage's short average over its long one (None: no healthy worker, or no load yet)."""
        if self._short is None or self._long is None or len(self._short) != len(work):
            self._short, self._long = [(0.0, 0.0)] * len(work), [(0.0, 0.0)] * len(work)
            dt = 0.0
        else:
            dt = max(now - self._last, 0.0)
        self._last = now
        short_keep = math.exp(-dt / self._interval)
        long_keep = math.exp(-dt * math.log(2) / self._half_life)
        out: list[float | None] = []
        for k, x in enumerate(work):
            if x is None:
                out.append(None)
                continue
            # Averages as (weighted sum, weight): unbiased from the first sample.
            (s, sw), (lg, lw) = self._short[k], self._long[k]
            self._short[k] = (s * short_keep + x, sw * short_keep + 1)
            self._long[k] = (lg * long_keep + x, lw * long_keep + 1)
            mean_short = self._short[k][0] / self._short[k][1]
            mean_long = self._long[k][0] / self._long[k][1]
            out.append(mean_short / mean_long if mean_long > 0 else None)
        return out

    def step(
        self,
        now: float,
        work: Sequence[float | None],
        bounds: list[float],
        plan: Sequence[float] | None,
        top: float,
        span: float,
        moves_nobody: Callable[[float, float], bool],
        shifted_share: Callable[[float, float, float, float], float],
    ) -> bool:
        """Move `bounds` (in place) on the stages' mean work per worker `work`; True if one moved.

        A boundary stays within a factor `span` of where the DP put it (`plan`) and short of the
        log-midpoint to the DP's neighbouring boundaries, so no stage collapses; a move that
        `moves_nobody` (across an empty length range) is not made: it would only churn the layout;
        and a move away from the plan stops where the lengths between the DP's boundary and the
        new one carry half the relative imbalance's share of the sending stage's traffic
        (`shifted_share(a, b, lo, hi)`: the share lengths [a, b) hold of [lo, hi)).
        """
        if len(work) < 2:
            return False
        ratio = self._ratios(work, now)
        moved_any = False
        for k in range(len(work) - 1):
            lower, upper = ratio[k], ratio[k + 1]
            if lower is None or upper is None:
                continue
            b = bounds[k]
            lo = bounds[k - 1] if k > 0 else 0.0
            hi = bounds[k + 1] if k + 1 < len(bounds) else top
            if plan is not None and len(plan) == len(bounds):
                lo = max(lo, plan[k] / span, math.sqrt(plan[k - 1] * plan[k]) if k > 0 else 0.0)
                hi = min(hi, plan[k] * span, math.sqrt(plan[k] * plan[k + 1]) if k + 1 < len(plan) else hi)
            if not lo < b < hi:
                continue
            moved = diffuse_boundary(b, lower, upper, lo, hi, self._rate, self._deadband)
            if moved == b:
                continue
            # What the move hands over, counted from where the DP put the boundary, as a share
            # of the sender (the lower stage when the boundary falls, else the upper one).
            start = plan[k] if plan is not None and len(plan) == len(bounds) else b
            below = bounds[k - 1] if k > 0 else 0.0
            above = bounds[k + 1] if k + 1 < len(bounds) else top
            sender = (below, max(b, start)) if moved < b else (min(b, start), above)
            imbalance = abs(lower - upper) / (lower + upper)
            cap = imbalance / 2
            back = min(b, start) <= moved <= max(b, start)  # toward the plan: always allowed
            if not back and shifted_share(start, moved, *sender) > cap:
                # Go only as far as the cap allows (bisection in log space, from b).
                near, far = b, moved
                for _ in range(CAP_BISECTIONS):
                    mid = math.sqrt(near * far)
                    near, far = (mid, far) if shifted_share(start, mid, *sender) <= cap else (near, mid)
                moved = near
            if moved != b and not moves_nobody(b, moved):
                bounds[k] = moved
                moved_any = True
        return moved_any
