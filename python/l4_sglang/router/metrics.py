"""The router's /metrics: Prometheus text format 0.0.4, `l4_router_` names.

Request counters by route and status, TTFT / end-to-end / router-added-latency
histograms by route, migrations by reason, legs started per worker; gauges
for the stage layout (`layout()` of the policy) and each worker's load as the
last poll saw it are written at render time from what the caller passes in.
"""

from __future__ import annotations

from l4_sglang.policy.base import LayoutView, WorkerSnapshot
from l4_sglang.prometheus import Histogram, header
from l4_sglang.prometheus import format_labels as _labels
from l4_sglang.prometheus import format_number as _num

LATENCY_BUCKETS = (
    0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0,
)  # fmt: skip
OVERHEAD_BUCKETS = (
    0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
)  # fmt: skip


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
        out: list[str] = []

        def family(name: str, kind: str, help_text: str) -> None:
            out.extend(header(name, kind, help_text))

        family("l4_router_requests_total", "counter", "Client requests answered, by route and HTTP status.")
        for (route, status), n in sorted(self.requests.items()):
            out.append(f"l4_router_requests_total{_labels((('route', route), ('status', str(status))))} {n}")
        for name, hists, text in (
            ("l4_router_ttft_seconds", self.ttft, "Time to first generated token, as the router sees it."),
            ("l4_router_e2e_seconds", self.e2e, "End-to-end latency of generation requests."),
            (
                "l4_router_added_latency_seconds",
                self.added,
                "Time spent in the router: before the first worker request plus after the last worker chunk.",
            ),
        ):
            family(name, "histogram", text)
            for route, hist in sorted(hists.items()):
                out.extend(hist.lines(name, (("route", route),)))
        family("l4_router_migrations_total", "counter", "Requests moved between workers, by reason.")
        for reason, n in sorted(self.migrations.items()):
            out.append(f"l4_router_migrations_total{_labels((('reason', reason),))} {n}")
        family(
            "l4_router_migrations_failed_total",
            "counter",
            "Migration proposals not carried out (target refused or down), by reason.",
        )
        for reason, n in sorted(self.failed_migrations.items()):
            out.append(f"l4_router_migrations_failed_total{_labels((('reason', reason),))} {n}")
        family("l4_router_worker_legs_total", "counter", "Worker requests started (first legs and resumes).")
        for worker, n in sorted(self.legs.items()):
            out.append(f"l4_router_worker_legs_total{_labels((('worker', worker),))} {n}")
        family("l4_router_prompt_tokens_total", "counter", "Prompt tokens of client requests.")
        out.append(f"l4_router_prompt_tokens_total {self.prompt_tokens}")
        family("l4_router_generation_tokens_total", "counter", "Tokens generated for clients.")
        out.append(f"l4_router_generation_tokens_total {self.generated_tokens}")
        family("l4_router_requests_in_flight", "gauge", "Generation requests being served now.")
        out.append(f"l4_router_requests_in_flight {self.in_flight}")

        stages = layout.stages if layout is not None else ()
        family("l4_router_stages", "gauge", "Stages of the policy's layout (0: the policy has none).")
        out.append(f"l4_router_stages {len(stages)}")
        family("l4_router_stage_lower_tokens", "gauge", "Lower length bound of each stage, tokens.")
        for i, s in enumerate(stages):
            out.append(f"l4_router_stage_lower_tokens{_labels((('stage', str(i)),))} {_num(s.lo_tokens)}")
        family("l4_router_stage_upper_tokens", "gauge", "Upper length bound of each stage (+Inf: the last).")
        for i, s in enumerate(stages):
            out.append(f"l4_router_stage_upper_tokens{_labels((('stage', str(i)),))} {_num(s.hi_tokens)}")
        family("l4_router_stage_workers", "gauge", "Workers in each stage.")
        for i, s in enumerate(stages):
            out.append(f"l4_router_stage_workers{_labels((('stage', str(i)),))} {len(s.workers)}")
        if layout is not None and layout.predicted_mean_e2e_s is not None:
            family("l4_router_predicted_mean_e2e_seconds", "gauge", "The layout's predicted mean E2E.")
            out.append(f"l4_router_predicted_mean_e2e_seconds {_num(layout.predicted_mean_e2e_s)}")

        family("l4_router_worker_healthy", "gauge", "1 while the worker passes its health checks.")
        for worker, ok in sorted(healthy.items()):
            out.append(f"l4_router_worker_healthy{_labels((('worker', worker),))} {int(ok)}")
        for field_name, text in (
            ("running", "Requests decoding on the worker (last poll)."),
            ("waiting", "Requests queued on the worker (last poll)."),
            ("kv_tokens", "KV tokens in use on the worker (last poll)."),
            ("queued_tokens", "Prompt tokens waiting on the worker (last poll)."),
            ("max_total_tokens", "KV capacity of the worker, tokens."),
        ):
            name = f"l4_router_worker_{field_name}"
            family(name, "gauge", text)
            for worker, snap in sorted(snapshots.items()):
                out.append(f"{name}{_labels((('worker', worker),))} {getattr(snap, field_name)}")
        return "\n".join(out) + "\n"
