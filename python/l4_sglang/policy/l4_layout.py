"""L4's layout math between DP runs: snapping boundaries to bins, comparing layouts, keeping
boundaries that would only cross empty lengths, and handing workers to new stages.

Pure functions of their arguments (the policy holds the state); docs/l4.md gives the rules.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence

import numpy as np

from l4_sglang.core import Layout
from l4_sglang.policy.histogram import LengthHistogram


def snap_cuts(edges: np.ndarray, bounds: Sequence[float]) -> list[int]:
    """`bounds` as bin indices [0, c1, ..., bins]: each the nearest edge in log space, strictly
    increasing (two boundaries in one bin are pushed apart)."""
    bins = edges.size - 1
    logs = np.log(edges[1:bins])
    cuts = [int(np.argmin(np.abs(logs - math.log(b)))) + 1 for b in bounds]
    for i in range(len(cuts)):
        cuts[i] = max(cuts[i], cuts[i - 1] + 1 if i else 1)
    for i in reversed(range(len(cuts))):
        cuts[i] = min(cuts[i], bins - (len(cuts) - i))
    return [0, *cuts, bins]


def relative_gain(current: Layout, proposed: Layout) -> float:
    """How much better `proposed` is, as a share of `current`'s price (inf: it ends an overload
    that has no price; both priced, overloaded or not, compare by price)."""
    if math.isfinite(current.total_cost) and math.isfinite(proposed.total_cost):
        c = current.total_cost
        return (c - proposed.total_cost) / c if c > 0 else 0.0
    if math.isfinite(proposed.total_cost):
        return math.inf
    if math.isfinite(current.total_cost):
        return -math.inf
    e = current.excess_work
    return (e - proposed.excess_work) / e if e > 0 else 0.0


def keep_over_empty(
    hist: LengthHistogram, current: Sequence[float], proposed: list[float], share: float
) -> list[float]:
    """`proposed` with each boundary that differs from the current one only across an empty
    length range left where it is (a move there changes no request's destination)."""
    if len(proposed) != len(current):
        return proposed
    return [
        cur if hist.is_empty(cur, new, share) else new for cur, new in zip(current, proposed, strict=True)
    ]


def assign_workers(
    old_stages: Sequence[Sequence[str]],
    order: Sequence[str],
    class_of: dict[str, int],
    counts: Sequence[int],
    classes: Sequence[int],
    mean_context: Callable[[str], float],
) -> list[list[str]]:
    """Workers for new stages of `counts` (stage s from class `classes[s]`): each class's workers in
    the order of their old stages, inside a stage by the mean context they run, so a worker changes
    stage only where the counts make it."""
    rank = {w: i for i, w in enumerate(order)}
    placed = {w for ws in old_stages for w in ws}
    queue = [w for ws in old_stages for w in sorted(ws, key=lambda w: (mean_context(w), rank[w]))]
    queue += [w for w in order if w not in placed]  # none while every worker is in a stage
    queues: dict[int, list[str]] = {}
    for w in queue:
        queues.setdefault(class_of[w], []).append(w)
    start = dict.fromkeys(queues, 0)
    out = []
    for c, k in zip(classes, counts, strict=True):
        out.append(queues[c][start[c] : start[c] + k])
        start[c] += k
    return out


def decision_reason(
    *, same: bool, moved_only_over_empty: bool, replanned: bool, applied: bool, gain: float, min_gain: float
) -> str:
    """Why a DP run's proposal was applied or kept, in words (for /l4/stages and logs)."""
    if same and not moved_only_over_empty:
        return "kept: the DP proposes the layout in place"
    if same:
        return "kept: the proposal moves boundaries only across empty length ranges"
    if replanned:
        return "applied: the workers changed (or no layout was planned yet)"
    if applied and gain == math.inf:
        return "applied: the current layout is overloaded"
    if applied:
        return f"applied: predicted QoE cost {gain:.1%} lower"
    return f"kept: predicted gain {gain:.1%} is not above min_gain {min_gain:.1%}"
