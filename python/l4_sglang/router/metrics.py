"""The router's /metrics: prometheus_client's text exposition (0.0.4), `l4_router_` names.

Request counters by route and status, TTFT / end-to-end / router-added-latency
histograms by route, migrations by reason (and failed ones), legs started per
worker, token counters, requests in flight; gauges for the stage layout
(`layout()` of the policy) and each worker's load as the last poll saw it.

The events are counted here in plain ints and bucket lists, and prometheus_client
writes the text at scrape time: `RouterMetrics` is a custom collector in its own
`CollectorRegistry` (one per router). prometheus_client's own Counter and
Histogram take a lock per update; on the ~9 updates of a tiny request that came
to about 9 us more router CPU per request (2026-12-03, 2-core VM), for nothing
a single event loop needs.
"""

from __future__ import annotations

from collections.abc import Iterator

from prometheus_client import CollectorRegistry, generate_latest
from prometheus_client.metrics_core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.utils import floatToGoString

from l4_sglang.policy.base import LayoutView, WorkerSnapshot
from l4_sglang.prometheus import Histogram

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip
WORKER_GAUGES = (
    ("running", "Requests decoding on the worker (last poll)."),
    ("waiting", "Requests queued on the worker (last poll)."),
    ("kv_tokens", "KV tokens in use on the worker (last poll)."),
    ("queued_tokens", "Prompt tokens waiting on the worker (last poll)."),
    ("max_total_tokens", "KV capacity of the worker, tokens."),
)


def _counter(name: str, text: str, label: str, counts: dict[str, int]) -> CounterMetricFamily:
    family = CounterMetricFamily(name, text, labels=(label,))
    for key, n in sorted(counts.items()):
        family.add_metric((key,), n)
    return family


def _histogram(name: str, text: str, hists: dict[str, Histogram]) -> HistogramMetricFamily:
    family = HistogramMetricFamily(name, text, labels=("route",))
    for route, hist in sorted(hists.items()):
        running, buckets = 0, []
        for le, n in zip(hist.buckets, hist.counts, strict=True):
            running += n
            buckets.append((floatToGoString(le), running))
        buckets.append(("+Inf", hist.count))
        family.add_metric((route,), buckets, hist.total)
    return family


class RouterMetrics:
    def __init__(self) -> None:
        self.requests: dict[tuple[str, int], int] = {}
        self.ttft: dict[str, Histogram] = {}
        self.e2e: dict[str, Histogram] = {}
        self.added: dict[str, Histogram] = {}
        self.migrations: dict[str, int] = {}
        self.failed_migrations: dict[str, int] = {}
        self.legs: dict[str, int] = {}
        self.generated_tokens = 0
        self.prompt_tokens = 0
        self.in_flight = 0
        self.registry = CollectorRegistry(auto_describe=False)
        self.registry.register(self)
        # What `render` was handed, for `collect` to read.
        self._layout: LayoutView | None = None
        self._snapshots: dict[str, WorkerSnapshot] = {}
        self._healthy: dict[str, bool] = {}

    # Events.
    def on_response(self, route: str, status: int) -> None:
        key = (route, status)
        self.requests[key] = self.requests.get(key, 0) + 1

    def on_ttft(self, route: str, seconds: float) -> None:
        self.ttft.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def on_e2e(self, route: str, seconds: float) -> None:
        self.e2e.setdefault(route, Histogram(LATENCY_BUCKETS)).observe(seconds)

    def on_added_latency(self, route: str, seconds: float) -> None:
        self.added.setdefault(route, Histogram(OVERHEAD_BUCKETS)).observe(seconds)

    def on_migration(self, reason: str) -> None:
        self.migrations[reason] = self.migrations.get(reason, 0) + 1

    def on_failed_migration(self, reason: str) -> None:
        self.failed_migrations[reason] = self.failed_migrations.get(reason, 0) + 1

    def on_leg(self, worker: str) -> None:
        self.legs[worker] = self.legs.get(worker, 0) + 1

    # Text.
    def render(
        self,
        layout: LayoutView | None,
        snapshots: dict[str, WorkerSnapshot],
        healthy: dict[str, bool],
    ) -> str:
        self._layout, self._snapshots, self._healthy = layout, snapshots, healthy
        try:
            return generate_latest(self.registry).decode()
        finally:
            self._layout, self._snapshots, self._healthy = None, {}, {}

    def collect(self) -> Iterator[Metric]:
        """prometheus_client's collector protocol: every family, from the counts and what `render` got."""
        requests = CounterMetricFamily(
            "l4_router_requests",
            "Client requests answered, by route and HTTP status.",
            labels=("route", "status"),
        )
        for (route, status), n in sorted(self.requests.items()):
            requests.add_metric((route, str(status)), n)
        yield requests
        yield _histogram(
            "l4_router_ttft_seconds", "Time to first generated token, as the router sees it.", self.ttft
        )
        yield _histogram("l4_router_e2e_seconds", "End-to-end latency of generation requests.", self.e2e)
        yield _histogram(
            "l4_router_added_latency_seconds",
            "Time spent in the router: before the first worker request plus after the last worker chunk.",
            self.added,
        )
        yield _counter(
            "l4_router_migrations", "Requests moved between workers, by reason.", "reason", self.migrations
        )
        yield _counter(
            "l4_router_migrations_failed",
            "Migration proposals not carried out (target refused or down), by reason.",
            "reason",
            self.failed_migrations,
        )
        yield _counter(
            "l4_router_worker_legs", "Worker requests started (first legs and resumes).", "worker", self.legs
        )
        yield CounterMetricFamily(
            "l4_router_prompt_tokens", "Prompt tokens of client requests.", value=self.prompt_tokens
        )
        yield CounterMetricFamily(
            "l4_router_generation_tokens", "Tokens generated for clients.", value=self.generated_tokens
        )
        yield GaugeMetricFamily(
            "l4_router_requests_in_flight", "Generation requests being served now.", value=self.in_flight
        )

        layout = self._layout
        stages = layout.stages if layout is not None else ()
        yield GaugeMetricFamily(
            "l4_router_stages", "Stages of the policy's layout (0: the policy has none).", value=len(stages)
        )
        for name, text, value in (
            (
                "l4_router_stage_lower_tokens",
                "Lower length bound of each stage, tokens.",
                lambda s: s.lo_tokens,
            ),
            (
                "l4_router_stage_upper_tokens",
                "Upper length bound of each stage (+Inf: the last).",
                lambda s: s.hi_tokens,
            ),
            ("l4_router_stage_workers", "Workers in each stage.", lambda s: len(s.workers)),
        ):
            family = GaugeMetricFamily(name, text, labels=("stage",))
            for i, s in enumerate(stages):
                family.add_metric((str(i),), value(s))
            yield family
        if layout is not None and layout.predicted_mean_e2e_s is not None:
            yield GaugeMetricFamily(
                "l4_router_predicted_mean_e2e_seconds",
                "The layout's predicted mean E2E.",
                value=layout.predicted_mean_e2e_s,
            )
        healthy = GaugeMetricFamily(
            "l4_router_worker_healthy", "1 while the worker passes its health checks.", labels=("worker",)
        )
        for worker, ok in sorted(self._healthy.items()):
            healthy.add_metric((worker,), int(ok))
        yield healthy
        for field_name, text in WORKER_GAUGES:
            family = GaugeMetricFamily(f"l4_router_worker_{field_name}", text, labels=("worker",))
            for worker, snap in sorted(self._snapshots.items()):
                family.add_metric((worker,), getattr(snap, field_name))
            yield family
