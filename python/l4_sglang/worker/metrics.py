"""Prometheus text for /metrics, with SGLang 0.5's `sglang:` names, labels and buckets.

Request-level series carry the tokenizer-side labels (engine_type, model_name),
scheduler gauges the scheduler-side ones (plus moe_ep_rank, pp_rank, tp_rank),
as in a real server started with --enable-metrics. Histograms are written
_sum, buckets, _count, the order SGLang's multiprocess collector uses.
"""

from __future__ import annotations

import os
from collections import deque

from l4_sglang.prometheus import Histogram, TextStyle, format_number, header
from l4_sglang.worker.engine import EngineStats, LoadSnapshot, Request
from l4_sglang.worker.runner import StepRecord

TTFT_BUCKETS = (
    0.1,
    0.2,
    0.4,
    0.6,
    0.8,
    1.0,
    2.0,
    4.0,
    6.0,
    8.0,
    10.0,
    20.0,
    40.0,
    60.0,
    80.0,
    100.0,
    200.0,
    400.0,
)
E2E_BUCKETS = (*TTFT_BUCKETS, 600.0, 1200.0, 1800.0, 2400.0)
ITL_BUCKETS = (
    0.002, 0.004, 0.006, 0.008, 0.01, 0.015, 0.02, 0.025, 0.03, 0.035, 0.04, 0.06, 0.08, 0.1,
    0.2, 0.4, 0.6, 0.8, 1.0, 2.0, 4.0, 6.0, 8.0,
)  # fmt: skip
TOKEN_BUCKETS = (
    100.0, 300.0, 500.0, 700.0, 1000.0, 1500.0, 2000.0, 3000.0, 4000.0, 5000.0, 6000.0, 7000.0,
    8000.0, 9000.0, 10000.0, 12500.0, 15000.0, 17500.0, 20000.0, 22500.0, 25000.0, 27500.0,
    30000.0, 35000.0, 40000.0, 60000.0, 80000.0, 100000.0, 200000.0, 300000.0, 400000.0,
    600000.0, 800000.0, 1e6, 1.1e6,
)  # fmt: skip
QUEUE_BUCKETS = (
    0.0, 0.001, 0.005, 0.01, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 3.0, 4.0, 5.0, 10.0, 15.0, 20.0, 30.0,
    40.0, 50.0, 60.0, 70.0, 80.0, 90.0, 100.0, 200.0, 300.0, 400.0, 500.0, 600.0, 700.0, 800.0,
    900.0, 1000.0, 1200.0, 1400.0, 1600.0, 1800.0, 2000.0, 2500.0, 3000.0,
)  # fmt: skip

# gen_throughput over this many recent decode steps, as SGLang's decode log interval.
THROUGHPUT_WINDOW_STEPS = 40
THROUGHPUT_IDLE_S = 2.0


def _sglang_le(le: float) -> str:
    # prometheus_client writes the two largest token buckets in exponent form.
    return "1e+06" if le == 1e6 else "1.1e+06" if le == 1.1e6 else format_number(le)


# SGLang's text as its prometheus_client writes it (see l4_sglang.prometheus).
SGLANG_STYLE = TextStyle(
    escape=False, sort_labels=True, sum_first=True, float_counts=True, le_text=_sglang_le
)


def _labels(labels: dict[str, str]) -> str:
    return SGLANG_STYLE.labels(labels.items())


class WorkerMetrics:
    """Fed by the runner (token updates, steps) and the server (HTTP counts)."""

    def __init__(self, model_name: str, context_length: int) -> None:
        self.model_name = model_name
        self.context_length = context_length
        self.ttft = Histogram(TTFT_BUCKETS)
        self.e2e = Histogram(E2E_BUCKETS)
        self.itl = Histogram(ITL_BUCKETS)
        self.queue_time = Histogram(QUEUE_BUCKETS)
        self.prompt_hist = Histogram(TOKEN_BUCKETS)
        self.uncached_hist = Histogram(TOKEN_BUCKETS)
        self.generation_hist = Histogram(TOKEN_BUCKETS)
        self.prompt_tokens = 0
        self.generation_tokens = 0
        self.cached_tokens = 0
        self.requests = 0
        self.http_requests: dict[tuple[str, str], int] = {}
        self.http_responses: dict[tuple[str, str, int], int] = {}
        self._last_token: dict[str, tuple[float, int]] = {}
        self._decode_steps: deque[StepRecord] = deque(maxlen=THROUGHPUT_WINDOW_STEPS)

    # ---- feeds --------------------------------------------------------------

    def on_update(self, req: Request, now: float) -> None:
        last = self._last_token.get(req.rid)
        produced = len(req.output_ids)
        if last is None and produced > 0:
            self.ttft.observe(now - (req.arrival_time or now))
            self._last_token[req.rid] = (now, produced)
        elif last is not None and produced > last[1]:
            self.itl.observe(now - last[0])
            self._last_token[req.rid] = (now, produced)
        if req.finished:
            self._last_token.pop(req.rid, None)
            arrival = req.arrival_time or now
            self.e2e.observe(now - arrival)
            if req.forward_entry_time is not None:
                self.queue_time.observe(req.forward_entry_time - arrival)
            self.prompt_hist.observe(len(req.input_ids))
            self.uncached_hist.observe(len(req.input_ids) - min(req.cached_tokens, len(req.input_ids)))
            self.generation_hist.observe(produced)
            self.prompt_tokens += len(req.input_ids)
            self.generation_tokens += produced
            self.cached_tokens += req.cached_tokens
            self.requests += 1

    def on_step(self, record: StepRecord) -> None:
        if record.kind == "decode":
            self._decode_steps.append(record)

    def on_http(self, endpoint: str, method: str, status: int) -> None:
        self.http_requests[(endpoint, method)] = self.http_requests.get((endpoint, method), 0) + 1
        key = (endpoint, method, status)
        self.http_responses[key] = self.http_responses.get(key, 0) + 1

    def gen_throughput(self, now: float) -> float:
        """Generated tokens per second over the last decode steps (0 when idle)."""
        steps = self._decode_steps
        if not steps or now - steps[-1].applied > THROUGHPUT_IDLE_S:
            return 0.0
        span = steps[-1].applied - steps[0].start
        return sum(s.batch_size for s in steps) / span if span > 0 else 0.0

    # ---- exposition ---------------------------------------------------------

    def render(self, load: LoadSnapshot, stats: EngineStats, now: float) -> str:
        req_labels = {"engine_type": "unified", "model_name": self.model_name}
        sched = {**req_labels, "moe_ep_rank": "0", "pp_rank": "0", "tp_rank": "0"}
        out: list[str] = []

        def metric(name: str, kind: str, help_text: str, samples: list[tuple[dict[str, str], float]]) -> None:
            out.extend(header(f"sglang:{name}", kind, help_text))
            out.extend(f"sglang:{name}{_labels(lb)} {format_number(v)}" for lb, v in samples)

        def histogram(name: str, help_text: str, hist: Histogram, labels: dict[str, str]) -> None:
            out.extend(header(f"sglang:{name}", "histogram", help_text))
            out.extend(hist.lines(f"sglang:{name}", labels.items(), SGLANG_STYLE))

        metric(
            "http_requests_total",
            "counter",
            "Total number of HTTP requests by endpoint and method",
            [({"endpoint": e, "method": m}, n) for (e, m), n in self.http_requests.items()],
        )
        metric(
            "http_responses_total",
            "counter",
            "Total number of HTTP responses by endpoint and status code",
            [
                ({"endpoint": e, "method": m, "status_code": str(s)}, n)
                for (e, m, s), n in self.http_responses.items()
            ],
        )
        metric(
            "prompt_tokens_total",
            "counter",
            "Number of prefill tokens processed.",
            [(req_labels, self.prompt_tokens)],
        )
        metric(
            "generation_tokens_total",
            "counter",
            "Number of generation tokens processed.",
            [(req_labels, self.generation_tokens)],
        )
        metric(
            "num_requests_total", "counter", "Number of requests processed.", [(req_labels, self.requests)]
        )
        metric(
            "cached_tokens_total",
            "counter",
            "Number of cached prompt tokens by source (device/host/storage).",
            [({**req_labels, "cache_source": "device"}, self.cached_tokens)],
        )
        metric(
            "num_retracted_reqs",
            "gauge",
            "The number of retracted requests.",
            [({**sched, "pid": str(os.getpid())}, load.num_retracted_waiting)],
        )
        metric(
            "num_paused_reqs",
            "gauge",
            "The number of paused requests by async weight sync.",
            [({**sched, "pid": str(os.getpid())}, 0)],
        )
        metric(
            "realtime_tokens_total",
            "counter",
            "Total number of tokens processed (updated on each log interval). "
            "mode: prefill_compute, prefill_cache, decode.",
            [
                ({**sched, "mode": "prefill_compute"}, stats.prefill_compute_tokens),
                ({**sched, "mode": "decode"}, stats.generation_tokens),
                ({**sched, "mode": "prefill_cache"}, stats.cached_tokens),
            ],
        )
        histogram(
            "time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            self.ttft,
            req_labels,
        )
        histogram(
            "e2e_request_latency_seconds",
            "Histogram of End-to-end request latency in seconds",
            self.e2e,
            req_labels,
        )
        histogram(
            "prompt_tokens_histogram", "Histogram of prompt token length.", self.prompt_hist, req_labels
        )
        histogram(
            "uncached_prompt_tokens_histogram",
            "Histogram of uncached (compute) prompt token length.",
            self.uncached_hist,
            req_labels,
        )
        histogram(
            "generation_tokens_histogram",
            "Histogram of generation token length.",
            self.generation_hist,
            req_labels,
        )
        histogram(
            "inter_token_latency_seconds",
            "Histogram of inter-token latency in seconds.",
            self.itl,
            req_labels,
        )
        cap = load.max_total_num_tokens
        cache_hit_rate = stats.cached_tokens / stats.prompt_tokens if stats.prompt_tokens else 0.0
        gauges = [
            ("max_total_num_tokens", "Maximum total number of tokens in the KV cache pool.", cap),
            ("page_size", "KV cache page size in tokens.", 1),
            ("num_pages", "Number of KV cache pages.", cap),
            ("context_len", "Maximum context length.", self.context_length),
            ("num_running_reqs", "The number of running requests.", load.num_running_reqs),
            ("num_queue_reqs", "The number of requests in the waiting queue.", load.num_waiting_reqs),
            ("num_grammar_queue_reqs", "The number of requests in the grammar waiting queue.", 0),
            ("gen_throughput", "The generation throughput (token/s).", self.gen_throughput(now)),
            ("cache_hit_rate", "The prefix cache hit rate.", cache_hit_rate),
            ("decode_sum_seq_lens", "The sum of all sequence lengths in decode.", load.decode_sum_seq_lens),
            ("token_usage", "The token usage.", load.token_usage),
            ("full_token_usage", "The token usage for full attention layers.", load.token_usage),
            ("num_used_tokens", "The number of used tokens.", load.num_used_tokens),
            (
                "kv_available_tokens",
                "Number of free token slots in the KV cache pool.",
                cap - load.num_used_tokens - load.cache_tokens,
            ),
            (
                "kv_evictable_tokens",
                "Number of evictable (radix-cached) token slots in the KV cache pool.",
                load.cache_tokens,
            ),
            (
                "kv_used_tokens",
                "Number of actively used token slots in the KV cache pool.",
                load.num_used_tokens,
            ),
            ("utilization", "The utilization.", load.token_usage),
        ]
        for name, help_text, value in gauges:
            metric(name, "gauge", help_text, [(sched, value)])
        histogram("queue_time_seconds", "Histogram of queueing time in seconds.", self.queue_time, sched)
        return "\n".join(out) + "\n"
