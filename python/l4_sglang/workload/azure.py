"""Loader for the Azure LLM inference traces (Splitwise, ISCA'24)."""

from __future__ import annotations

import csv
import re
from datetime import datetime
from pathlib import Path

from l4_sglang.workload.trace import Trace, TraceRequest

COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")

_STAMP = re.compile(r"^\s*(\d{4}-\d{2}-\d{2})[ T](\d{2}:\d{2}:\d{2})(?:\.(\d+))?\s*$")


def parse_timestamp(text: str) -> float:
    """Seconds since the epoch (naive, read as UTC) of `YYYY-MM-DD HH:MM:SS[.fraction]`.

    The fraction may have any number of digits (the published files use 7, more
    than `datetime` parses), so it is added as a float of its own.
    """
    m = _STAMP.match(text)
    if m is None:
        raise ValueError(f"bad timestamp {text!r}: expected 'YYYY-MM-DD HH:MM:SS[.fraction]'")
    whole = datetime.fromisoformat(f"{m[1]}T{m[2]}+00:00").timestamp()
    return whole + (float("0." + m[3]) if m[3] else 0.0)


def load_azure(path: str | Path) -> Trace:
    """Read an Azure trace CSV with columns `TIMESTAMP`, `ContextTokens`, `GeneratedTokens`.

    Arrivals are seconds after the earliest timestamp; `duration_s` is the last arrival.
    """
    path = Path(path)
    with path.open(encoding="utf-8", newline="") as f:
        reader = csv.DictReader(f)
        header = reader.fieldnames or []
        missing = [c for c in COLUMNS if c not in header]
        if missing:
            raise ValueError(f"{path}: missing column(s) {', '.join(missing)} (header: {header})")
        stamps: list[float] = []
        lengths: list[tuple[int, int]] = []
        for row in reader:
            where = f"{path}:{reader.line_num}"
            try:
                stamps.append(parse_timestamp(row["TIMESTAMP"] or ""))
            except ValueError as e:
                raise ValueError(f"{where}: column 'TIMESTAMP': {e}") from None
            lengths.append((_length(row, "ContextTokens", where), _length(row, "GeneratedTokens", where)))
    start = min(stamps, default=0.0)
    requests = [TraceRequest(t - start, p, o) for t, (p, o) in zip(stamps, lengths, strict=True)]
    return Trace(requests, name=path.stem)


def _length(row: dict, column: str, where: str) -> int:
    text = row.get(column)
    try:
        value = int((text or "").strip())
    except ValueError:
        raise ValueError(f"{where}: column {column!r} must be an integer, got {text!r}") from None
    if value < 0:
        raise ValueError(f"{where}: column {column!r} must be >= 0, got {value}")
    return value
