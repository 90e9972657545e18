"""Loader for the Mooncake (FAST'25) JSON-lines traces."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np

from l4_sglang.workload.trace import Trace, TraceRequest

QUANTUM_S = 3.0
"""Mooncake timestamps are quantized to about this many seconds."""


def load_mooncake(path: str | Path, seed: int = 0, jitter: bool = True) -> Trace:
    """Read a Mooncake trace: one JSON object a line with `timestamp` (ms since the
    start), `input_length`, `output_length` and optionally `hash_ids`.

    The published timestamps are quantized to about 3 s (dozens of requests share
    one), so replaying them as given would send bursts. Each request instead arrives
    at `timestamp / 1000 + u` seconds, `u` drawn uniformly from [0, 3) by
    `numpy.random.default_rng(seed)`, one draw per line in file order; the requests
    are then sorted by that arrival. The same file and seed always give the same
    trace. `duration_s` is the last quantized timestamp plus the 3 s window.

    With `jitter=False` each request arrives at exactly `timestamp / 1000` seconds
    (`seed` unused) and `duration_s` is the last arrival: for traces whose
    timestamps are not quantized, such as those `write_mooncake` writes.
    """
    path = Path(path)
    stamps: list[float] = []
    rows: list[tuple[int, int, tuple[int, ...]]] = []
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, start=1):
            if not line.strip():
                continue
            where = f"{path}:{lineno}"
            try:
                obj = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{where}: bad JSON: {e.msg}") from None
            if not isinstance(obj, dict):
                raise ValueError(f"{where}: expected a JSON object, got {type(obj).__name__}")
            stamps.append(_number(obj, "timestamp", where))
            prompt = _length(obj, "input_length", where)
            output = _length(obj, "output_length", where)
            hashes = obj.get("hash_ids", [])
            if not isinstance(hashes, list) or not all(
                isinstance(h, int) and not isinstance(h, bool) for h in hashes
            ):
                raise ValueError(f"{where}: field 'hash_ids' must be a list of integers")
            rows.append((prompt, output, tuple(hashes)))
    arrivals = np.asarray(stamps, dtype=np.float64) / 1000.0
    if jitter:
        arrivals = arrivals + np.random.default_rng(seed).uniform(0.0, QUANTUM_S, size=len(rows))
    requests = [TraceRequest(float(t), p, o, h) for t, (p, o, h) in zip(arrivals.tolist(), rows, strict=True)]
    last = max(stamps) / 1000.0 if stamps else 0.0
    duration = last + QUANTUM_S if jitter and stamps else last
    return Trace(requests, name=path.stem, duration_s=duration)


def write_mooncake(trace: Trace, path: str | Path) -> None:
    """Write `trace` as Mooncake JSON lines (`timestamp` in ms, as a float, so that
    `load_mooncake(path, jitter=False)` gives back the same arrivals to float precision;
    `hash_ids` as given, often empty for synthetic traces)."""
    with Path(path).open("w", encoding="utf-8") as f:
        for r in trace:
            row = {
                "timestamp": r.arrival_s * 1000.0,
                "input_length": int(r.prompt_tokens),
                "output_length": int(r.output_tokens),
                "hash_ids": [int(h) for h in r.hash_ids],
            }
            f.write(json.dumps(row) + "\n")


def _number(obj: dict, field: str, where: str) -> float:
    if field not in obj:
        raise ValueError(f"{where}: missing field {field!r}")
    value = obj[field]
    if not isinstance(value, (int, float)) or isinstance(value, bool) or not np.isfinite(value) or value < 0:
        raise ValueError(f"{where}: field {field!r} must be a number >= 0, got {value!r}")
    return float(value)


def _length(obj: dict, field: str, where: str) -> int:
    if field not in obj:
        raise ValueError(f"{where}: missing field {field!r}")
    value = obj[field]
    if not isinstance(value, int) or isinstance(value, bool) or value < 0:
        raise ValueError(f"{where}: field {field!r} must be an integer >= 0, got {value!r}")
    return value
