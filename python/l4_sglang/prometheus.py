"""Pieces of the Prometheus text format (0.0.4) for the emulated worker's /metrics, and `Histogram`.

The worker copies what SGLang's prometheus_client writes (sorted labels, no escaping, `_sum` first,
float counts, `1e+06`) byte for byte; `TextStyle` names those differences from the plain format.
The router's /metrics is written by prometheus_client itself (`router/metrics.py`); it counts its
histograms in `Histogram` here (a bisect and two adds per observation, no lock).
"""

from __future__ import annotations

import bisect
import math
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


def format_number(v: float) -> str:
    if math.isnan(v):
        return "NaN"
    if math.isinf(v):
        return "+Inf" if v > 0 else "-Inf"
    return repr(float(v))


def escape_label_value(value: str) -> str:
    return value.replace("\\", "\\\\").replace("\n", "\\n").replace('"', '\\"')


def header(name: str, kind: str, help_text: str) -> list[str]:
    """The `# HELP` and `# TYPE` lines of a metric family."""
    return [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}"]


@dataclass(frozen=True)
class TextStyle:
    """How labels and histograms are written; the defaults are the plain format (the router's)."""

    escape: bool = True
    sort_labels: bool = False
    sum_first: bool = False  # prometheus_client's multiprocess collector writes _sum before buckets
    float_counts: bool = False  # bucket and _count values as floats ("3.0")
    le_text: Callable[[float], str] = format_number

    def labels(self, pairs: Iterable[tuple[str, str]]) -> str:
        pairs = sorted(pairs) if self.sort_labels else pairs
        if self.escape:
            body = ",".join(f'{k}="{escape_label_value(str(v))}"' for k, v in pairs)
        else:
            body = ",".join(f'{k}="{v}"' for k, v in pairs)
        return "{" + body + "}" if body else ""

    def count(self, n: int) -> str:
        return format_number(n) if self.float_counts else str(n)


PLAIN = TextStyle()


@dataclass
class Histogram:
    buckets: tuple[float, ...]
    counts: list[int] = field(default_factory=list)
    total: float = 0.0
    count: int = 0

    def __post_init__(self) -> None:
        self.counts = [0] * len(self.buckets)

    def observe(self, value: float) -> None:
        i = bisect.bisect_left(self.buckets, value)
        if i < len(self.counts):
            self.counts[i] += 1
        self.total += value
        self.count += 1

    def lines(self, name: str, labels: Iterable[tuple[str, str]] = (), style: TextStyle = PLAIN) -> list[str]:
        labels = tuple(labels)
        out, running = [], 0
        for le, n in zip(self.buckets, self.counts, strict=True):
            running += n
            out.append(
                f"{name}_bucket{style.labels((*labels, ('le', style.le_text(le))))} {style.count(running)}"
            )
        out.append(f"{name}_bucket{style.labels((*labels, ('le', '+Inf')))} {style.count(self.count)}")
        total = f"{name}_sum{style.labels(labels)} {format_number(self.total)}"
        if style.sum_first:
            out.insert(0, total)
        else:
            out.append(total)
        out.append(f"{name}_count{style.labels(labels)} {style.count(self.count)}")
        return out
