"""Rust core of l4_sglang (built by maturin from rust/src/py.rs).

Call it through `l4_sglang.core`, which checks inputs and returns typed objects.
"""

__all__ = [
    "CostModel",
    "__version__",
    "build_profile",
    "diffuse_boundary",
    "evaluate_layout",
    "evaluate_layout_classes",
    "merge_stages",
    "move_value",
    "partition",
    "partition_classes",
    "pick_instance_models",
    "pick_marginal",
    "pick_migration_models",
    "predicted_work",
]

from typing import final

__version__: str
build_profile: str
"""'release' or 'debug': benchmarks refuse a debug build."""

_Workload = tuple[list[float], list[float], list[float], list[float], list[float], list[float]]
"""(edges, arrival_rate, prompt_tokens, decode_rate, decode_context, growth_rate)"""
_Qoe = tuple[float, float, float, float, float]
"""(slo_ttft_s, slo_tpot_s, slo_penalty_s, max_utilization)"""
_Load = tuple[float, float, float, float, float, float]
"""(running, kv_tokens, max_kv, queued_requests, queued_tokens, mean_remaining)"""

@final
class CostModel:
    """Step-time model of one engine iteration; parameters from JSON."""

    @staticmethod
    def from_json(text: str) -> CostModel:
        """Parse and check a calibration; ValueError names the bad field."""
    def to_json(self) -> str: ...
    @property
    def name(self) -> str: ...
    def without_heterogeneity(self) -> CostModel:
        """The same model with the length-mix term switched off."""
    def step_time(self, batch: list[tuple[int, int]]) -> float:
        """Seconds of one step running (new_tokens, context) items."""
    def prefill_time(self, prompt_tokens: float) -> float:
        """Seconds to prefill a prompt alone, in chunks."""
    def decode_step_time(self, requests: float, kv_tokens: float, max_kv: float) -> float:
        """Seconds of one decode step of a batch summary."""
    def decode_throughput(self, requests: float, mean_kv: float, max_kv: float) -> float:
        """Decode tokens per second at this batch."""
    def max_concurrency(self, mean_kv: float) -> float:
        """Most requests of this mean KV one instance holds."""
    def decode_operating_point(
        self, rate: float, busy: float, mean_kv: float, max_kv: float
    ) -> tuple[float, float] | None:
        """(batch size, step seconds) delivering `rate` tokens/s while decoding `busy` of the time."""

def partition(
    model: CostModel,
    workload_args: _Workload,
    instances: int,
    qoe_args: _Qoe,
) -> dict:
    """Exact DP over bins and instances; releases the GIL."""

def evaluate_layout(
    model: CostModel,
    workload_args: _Workload,
    cuts: list[int],
    instances: list[int],
    qoe_args: _Qoe,
) -> dict:
    """Price a given layout with the DP's stage cost."""

def merge_stages(
    model: CostModel,
    workload_args: _Workload,
    cuts: list[int],
    instances: list[int],
    qoe_args: _Qoe,
    stage_gain: float,
) -> dict:
    """The layout with neighbour stages merged while a merge costs at most stage_gain of its price."""

def partition_classes(
    models: list[CostModel],
    counts: list[int],
    workload_args: _Workload,
    qoe_args: _Qoe,
) -> dict:
    """Exact DP of a mixed pool (counts[c] instances of models[c], at most 3 classes); releases the GIL."""

def evaluate_layout_classes(
    models: list[CostModel],
    counts: list[int],
    workload_args: _Workload,
    cuts: list[int],
    instances: list[int],
    stage_classes: list[int],
    qoe_args: _Qoe,
) -> dict:
    """Price a mixed layout, stage s on instances[s] instances of class stage_classes[s]."""

def predicted_work(model: CostModel, load: _Load, horizon_steps: float) -> float:
    """Seconds of work queued and running on one instance."""

def pick_instance_models(
    models: list[CostModel], loads: list[_Load], candidates: int, horizon_steps: float, seed: int
) -> int:
    """Least predicted work (instance i priced by models[i]) among `candidates` sampled with `seed`."""

def pick_marginal(models: list[CostModel], loads: list[_Load], prompt: float, horizon_steps: float) -> int:
    """Instance where a `prompt`-token request adds the least request-seconds (models[i] prices i)."""

def diffuse_boundary(
    boundary: float,
    lower_load: float,
    upper_load: float,
    min_tokens: float,
    max_tokens: float,
    rate: float,
    deadband: float,
) -> float:
    """One diffusion step of the boundary between two neighbour stages."""

def move_value(
    model: CostModel,
    context: float,
    remaining: float,
    source: _Load,
    source_after: _Load,
    target: _Load,
    target_model: CostModel | None = None,
) -> tuple[float, float]:
    """(gain_s, cost_s) of moving one running request; the target priced by target_model (default model)."""

def pick_migration_models(
    models: list[CostModel],
    loads: list[_Load],
    requests: list[list[tuple[int, float, float]]],
    min_gap: float,
    margin: float,
    horizon_steps: float,
) -> dict | None:
    """The move from the busiest to the idlest instance that pays most, if any (i priced by models[i])."""
