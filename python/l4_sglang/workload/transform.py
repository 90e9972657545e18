"""Trace transformations (each returns a new Trace) and `load_trace`."""

from __future__ import annotations

import math
from dataclasses import replace
from pathlib import Path

from l4_sglang.workload.azure import load_azure
from l4_sglang.workload.mooncake import load_mooncake
from l4_sglang.workload.trace import Trace

BLOCK_TOKENS = 512
"""Prompt tokens per hash id in the Mooncake traces."""


def scale_rate(trace: Trace, factor: float) -> Trace:
    """Arrival times (and the duration) divided by `factor`: factor 2 sends twice the rate."""
    if not (isinstance(factor, (int, float)) and math.isfinite(factor) and factor > 0):
        raise ValueError(f"invalid factor: must be a finite number > 0, got {factor!r}")
    return Trace(
        (replace(r, arrival_s=r.arrival_s / factor) for r in trace),
        name=trace.name,
        duration_s=trace.duration_s / factor,
    )


def truncate(trace: Trace, count: int | None = None, duration_s: float | None = None) -> Trace:
    """The first `count` requests and/or the requests arriving before `duration_s`.

    With `duration_s` the result covers `min(duration_s, trace.duration_s)`; with
    only `count` it covers up to its last arrival.
    """
    if count is not None and (not isinstance(count, int) or count < 0):
        raise ValueError(f"invalid count: must be an integer >= 0, got {count!r}")
    if duration_s is not None and not (math.isfinite(duration_s) and duration_s >= 0):
        raise ValueError(f"invalid duration_s: must be a finite number >= 0, got {duration_s!r}")
    reqs = list(trace)
    if duration_s is not None:
        reqs = [r for r in reqs if r.arrival_s < duration_s]
    if count is not None:
        reqs = reqs[:count]
    if duration_s is not None:
        span = min(duration_s, trace.duration_s)
    elif count is not None and count < len(trace):
        span = reqs[-1].arrival_s if reqs else 0.0
    else:
        span = trace.duration_s
    return Trace(reqs, name=trace.name, duration_s=span)


def cap_lengths(trace: Trace, max_context: int, block_tokens: int = BLOCK_TOKENS) -> Trace:
    """Fit every request in `max_context` tokens (prompt + output).

    A request that does not fit first loses prompt tokens (its tail: the kept
    prompt is a prefix), down to one token; if it still does not fit, its output
    is cut to `max_context - 1`. Hash ids beyond the kept prompt's
    `ceil(prompt / block_tokens)` blocks are dropped. Requests that fit are unchanged.
    """
    if not isinstance(max_context, int) or max_context < 2:
        raise ValueError(f"invalid max_context: must be an integer >= 2, got {max_context!r}")
    if not isinstance(block_tokens, int) or block_tokens < 1:
        raise ValueError(f"invalid block_tokens: must be an integer >= 1, got {block_tokens!r}")
    out = []
    for r in trace:
        if r.prompt_tokens + r.output_tokens <= max_context:
            out.append(r)
            continue
        prompt = max(1, max_context - r.output_tokens)
        output = min(r.output_tokens, max_context - prompt)
        blocks = -(-prompt // block_tokens)
        out.append(replace(r, prompt_tokens=prompt, output_tokens=output, hash_ids=r.hash_ids[:blocks]))
    return Trace(out, name=trace.name, duration_s=trace.duration_s)


def load_trace(path: str | Path, seed: int = 0, exact_timestamps: bool = False) -> Trace:
    """Load a trace by its suffix: `.jsonl` is Mooncake (jittered with `seed`, unless
    `exact_timestamps`), `.csv` is Azure (always exact)."""
    path = Path(path)
    suffix = path.suffix.lower()
    if suffix == ".jsonl":
        return load_mooncake(path, seed=seed, jitter=not exact_timestamps)
    if suffix == ".csv":
        return load_azure(path)
    raise ValueError(f"unknown trace format for {path}: expected .jsonl (Mooncake) or .csv (Azure)")
