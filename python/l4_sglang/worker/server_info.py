"""Bodies of /server_info, /model_info, /v1/loads and /get_load, shaped as SGLang 0.5.14's.

/server_info starts from the server args a real H100 run reported (shipped as
data) with this worker's own values over them, and says plainly that it is
emulated: `"emulated": true`, the cost model and the time scale.
"""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import UTC, datetime
from functools import cache
from importlib import resources
from typing import Any

from l4_sglang.worker.engine import EngineConfig, LoadSnapshot

SGLANG_VERSION = "0.5.14"
# Llama-3-8B shapes: 32 layers x 8 KV heads x 128 dims x (K, V) x 2 bytes.
KV_BYTES_PER_TOKEN = 32 * 8 * 128 * 2 * 2
WEIGHT_GB = 15.02
GRAPH_GB = 0.809
LOAD_SECTIONS = frozenset({"core", "memory", "spec", "lora", "disagg", "queues", "all"})


@dataclass(frozen=True)
class WorkerIdentity:
    model_path: str
    host: str
    port: int
    cost_model: str
    time_scale: float
    skip_tokenizer_init: bool = False
    # As given on the command line (None: taken from the cost model), reported like SGLang's args.
    max_total_tokens_arg: int | None = None
    max_running_requests_arg: int | None = None


@cache
def _reference() -> dict:
    path = resources.files("l4_sglang") / "data" / "sglang" / "server_args_0.5.14.json"
    return json.loads(path.read_text())


def server_info(ident: WorkerIdentity, config: EngineConfig, gen_throughput: float) -> dict:
    ref = _reference()
    args: dict[str, Any] = dict(ref["server_args"])
    args.update(
        model_path=ident.model_path,
        tokenizer_path=ident.model_path,
        served_model_name=ident.model_path,
        skip_tokenizer_init=ident.skip_tokenizer_init,
        load_format="dummy",
        context_length=config.context_length,
        host=ident.host,
        port=ident.port,
        max_running_requests=ident.max_running_requests_arg,
        max_total_tokens=ident.max_total_tokens_arg,
        chunked_prefill_size=config.chunked_prefill_size,
        random_seed=config.seed,
        disable_radix_cache=not config.enable_prefix_cache,
        enable_metrics=True,
    )
    internal = dict(args)
    internal.update(ref["internal_state_extra"])
    internal.update(
        last_gen_throughput=gen_throughput,
        memory_usage={
            "weight": WEIGHT_GB,
            "kvcache": round(kv_cache_gb(config.max_total_tokens), 2),
            "token_capacity": config.max_total_tokens,
            "graph": round(GRAPH_GB, 2),
        },
        effective_max_running_requests_per_dp=config.max_running_requests,
    )
    info = dict(args)
    info.update(
        status="ready",
        max_total_num_tokens=config.max_total_tokens,
        max_req_input_len=min(config.context_length, config.max_total_tokens) - 6,
        internal_states=[internal],
        version=SGLANG_VERSION,
        kv_events=None,
        emulated=True,
        cost_model=ident.cost_model,
        time_scale=ident.time_scale,
    )
    return info


def model_info(ident: WorkerIdentity) -> dict:
    return {
        "model_path": ident.model_path,
        "tokenizer_path": ident.model_path,
        "is_generation": True,
        "preferred_sampling_params": None,
        "weight_version": "default",
        "has_image_understanding": False,
        "has_audio_understanding": False,
        "model_type": "llama",
        "architectures": ["LlamaForCausalLM"],
    }


def kv_cache_gb(tokens: int) -> float:
    return tokens * KV_BYTES_PER_TOKEN / 2**30


def parse_include(raw: str | None) -> set[str]:
    """The /v1/loads `include` sections; ValueError names the invalid ones, as SGLang does."""
    include = {s.strip() for s in raw.split(",")} if raw else {"all"}
    invalid = include - LOAD_SECTIONS
    if invalid:
        raise ValueError(f"Invalid include sections: {invalid}. Valid options: {sorted(LOAD_SECTIONS)}")
    return include


def _rank_load(load: LoadSnapshot, gen_throughput: float, cache_hit_rate: float, include: set[str]) -> dict:
    every = "all" in include
    d: dict[str, Any] = {
        "dp_rank": 0,
        "num_running_reqs": load.num_running_reqs,
        "num_waiting_reqs": load.num_waiting_reqs,
        "num_waiting_uncached_tokens": load.num_waiting_tokens,
        "num_used_tokens": load.num_used_tokens,
        "num_total_tokens": load.num_used_tokens + load.num_waiting_tokens,
        "max_total_num_tokens": load.max_total_num_tokens,
        "max_running_requests": load.max_running_requests,
        "token_usage": round(load.token_usage, 4),
        "gen_throughput": round(gen_throughput, 2),
        "cache_hit_rate": round(cache_hit_rate, 4),
        "utilization": round(load.token_usage, 4),
    }
    if every or "memory" in include:
        d["memory"] = {
            "weight_gb": WEIGHT_GB,
            "kv_cache_gb": round(kv_cache_gb(load.max_total_num_tokens), 3),
            "graph_gb": GRAPH_GB,
            "token_capacity": load.max_total_num_tokens,
        }
    if every or "disagg" in include:
        d["disaggregation"] = {
            "mode": "null",
            "prefill_prealloc_queue_reqs": 0,
            "prefill_inflight_queue_reqs": 0,
            "decode_prealloc_queue_reqs": 0,
            "decode_transfer_queue_reqs": 0,
            "decode_retracted_queue_reqs": 0,
            "kv_transfer_speed_gb_s": 0.0,
            "kv_transfer_latency_ms": 0.0,
        }
    if every or "queues" in include:
        d["queues"] = {
            "waiting": load.num_waiting_reqs,
            "grammar": 0,
            "paused": 0,
            "retracted": load.num_retracted_waiting,
        }
    d["num_total_reqs"] = load.num_running_reqs + load.num_waiting_reqs
    return d


def loads(
    load: LoadSnapshot, gen_throughput: float, cache_hit_rate: float, include: set[str], dp_rank: int | None
) -> dict:
    ranks = [] if dp_rank not in (None, 0) else [_rank_load(load, gen_throughput, cache_hit_rate, include)]
    n = len(ranks)
    aggregate = {
        "total_running_reqs": sum(d["num_running_reqs"] for d in ranks),
        "total_waiting_reqs": sum(d["num_waiting_reqs"] for d in ranks),
        "total_reqs": sum(d["num_total_reqs"] for d in ranks),
        "total_used_tokens": sum(d["num_used_tokens"] for d in ranks),
        "total_tokens": sum(d["num_total_tokens"] for d in ranks),
        "avg_token_usage": round(sum(d["token_usage"] for d in ranks) / n, 4) if n else 0.0,
        "avg_throughput": round(sum(d["gen_throughput"] for d in ranks) / n, 2) if n else 0.0,
        "avg_utilization": round(sum(d["utilization"] for d in ranks) / n, 4) if n else 0.0,
    }
    return {
        "timestamp": datetime.now(UTC).isoformat(),
        "version": SGLANG_VERSION,
        "dp_rank_count": n,
        "loads": ranks,
        "aggregate": aggregate,
    }


def loads_prometheus(load: LoadSnapshot, gen_throughput: float, cache_hit_rate: float) -> str:
    d = _rank_load(load, gen_throughput, cache_hit_rate, {"core"})
    lines = []
    for key in (
        "num_running_reqs",
        "num_waiting_reqs",
        "num_used_tokens",
        "num_total_tokens",
        "max_total_num_tokens",
        "token_usage",
        "gen_throughput",
        "cache_hit_rate",
        "utilization",
        "max_running_requests",
    ):
        lines += [f"# TYPE sglang_{key} gauge", f'sglang_{key}{{dp_rank="0"}} {d[key]}']
    return "\n".join(lines) + "\n"


def get_load(load: LoadSnapshot) -> list[dict]:
    """/get_load: SGLang's GetLoadReqOutput list (read by older routers)."""
    return [
        {
            "dp_rank": 0,
            "num_reqs": load.num_running_reqs + load.num_waiting_reqs,
            "num_waiting_reqs": load.num_waiting_reqs,
            "num_tokens": load.num_used_tokens + load.num_waiting_tokens,
            "ts_tic": time.perf_counter(),
        }
    ]
