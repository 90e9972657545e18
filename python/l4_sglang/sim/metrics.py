"""Per-request latencies of a simulated run and a summary in `sglang.bench_serving`'s keys.

TTFT: first token time - arrival. E2E: last token time - arrival. TPOT:
(E2E - TTFT) / (output tokens - 1), for requests with more than one token
(bench_serving's definition). ITL: the gaps between consecutive tokens of a
request; the simulator knows every token's time, where bench_serving sees
stream chunks, so ours is per token.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np

from l4_sglang.policy.base import LayoutView


@dataclass
class RequestRecord:
    rid: str
    index: int
    arrival_s: float
    prompt_tokens: int
    output_tokens: int
    """Tokens asked for."""
    hash_ids: list[int]
    worker: str | None = None
    leg: object | None = None
    """The engine request now running it (a new one after each migration)."""
    base: int = 0
    """Tokens generated on earlier legs."""
    generated: int = 0
    token_times: list[float] = field(default_factory=list)
    finished_s: float | None = None
    failed: str | None = None
    migrations: int = 0
    failovers: int = 0
    """Times its instance was lost under it and it resumed on another."""
    last_progress: int = 0

    @property
    def done(self) -> bool:
        return self.finished_s is not None or self.failed is not None

    @property
    def ttft_s(self) -> float:
        return self.token_times[0] - self.arrival_s

    @property
    def e2e_s(self) -> float:
        assert self.finished_s is not None
        return self.finished_s - self.arrival_s

    @property
    def tpot_s(self) -> float | None:
        n = len(self.token_times)
        return (self.token_times[-1] - self.token_times[0]) / (n - 1) if n > 1 else None


def _stats(name: str, values_s: list[float] | np.ndarray, out: dict) -> None:
    ms = np.asarray(values_s, dtype=float) * 1000.0
    if ms.size == 0:
        for k in ("mean", "median", "std", "p90", "p99"):
            out[f"{k}_{name}_ms"] = 0.0
        return
    out[f"mean_{name}_ms"] = float(ms.mean())
    out[f"median_{name}_ms"] = float(np.median(ms))
    out[f"std_{name}_ms"] = float(ms.std())
    out[f"p90_{name}_ms"] = float(np.percentile(ms, 90))
    out[f"p99_{name}_ms"] = float(np.percentile(ms, 99))


@dataclass(frozen=True)
class LayoutSample:
    """The policy's stage layout from simulated time `time_s` on (until the next sample)."""

    time_s: float
    bounds: tuple[float, ...]
    """Upper bounds of every stage but the last, in tokens (K - 1 of them)."""
    workers: tuple[tuple[str, ...], ...]
    """Each stage's workers."""

    @classmethod
    def of(cls, time_s: float, view: LayoutView) -> LayoutSample:
        bounds = tuple(float(s.hi_tokens) for s in view.stages if not math.isinf(s.hi_tokens))
        return cls(float(time_s), bounds, tuple(tuple(s.workers) for s in view.stages))

    @property
    def instances(self) -> tuple[int, ...]:
        return tuple(len(ws) for ws in self.workers)

    def to_json(self) -> dict:
        """Time to the microsecond, bounds to a tenth of a token (the timeline stays small)."""
        bounds = [round(b, 1) for b in self.bounds]
        return {"time_s": round(self.time_s, 6), "bounds": bounds, "instances": list(self.instances)}


@dataclass
class SimResult:
    policy: str
    instances: int
    cost_model: str
    seed: int
    records: list[RequestRecord]
    migrations: int
    failed_migrations: int
    events: int
    steps: int
    wall_s: float
    failovers: int = 0
    """Requests resumed on another instance after theirs was lost (`Simulator.lose_worker`)."""
    retractions: int = 0
    """Requests the instances' engines retracted (KV full), summed over instances."""
    layouts: list[LayoutSample] = field(default_factory=list)
    """The policy's stage layout each time it changed (empty without a layout)."""

    @property
    def completed(self) -> list[RequestRecord]:
        return [r for r in self.records if r.finished_s is not None]

    def summary(self) -> dict:
        """bench_serving's result keys, plus `migrations` and `"simulated": true`."""
        done = self.completed
        out: dict = {"simulated": True, "policy": self.policy, "instances": self.instances}
        out["cost_model"] = self.cost_model
        out["completed"] = len(done)
        out["failed"] = len(self.records) - len(done)
        if done:
            start = min(r.arrival_s for r in self.records)
            duration = max(r.finished_s for r in done) - start  # type: ignore[type-var]
        else:
            duration = 0.0
        out["duration"] = duration
        out["total_input_tokens"] = sum(r.prompt_tokens for r in done)
        out["total_output_tokens"] = sum(len(r.token_times) for r in done)
        out["request_throughput"] = len(done) / duration if duration > 0 else 0.0
        out["input_throughput"] = out["total_input_tokens"] / duration if duration > 0 else 0.0
        out["output_throughput"] = out["total_output_tokens"] / duration if duration > 0 else 0.0
        _stats("e2e_latency", [r.e2e_s for r in done], out)
        _stats("ttft", [r.ttft_s for r in done], out)
        _stats("tpot", [t for r in done if (t := r.tpot_s) is not None], out)
        itl = [np.diff(r.token_times) for r in done if len(r.token_times) > 1]
        _stats("itl", np.concatenate(itl) if itl else [], out)
        out["migrations"] = self.migrations
        out["failed_migrations"] = self.failed_migrations
        out["retractions"] = self.retractions
        out["layout_changes"] = max(len(self.layouts) - 1, 0)
        out["events"] = self.events
        out["steps"] = self.steps
        out["wall_s"] = self.wall_s
        return out
