"""l4_sglang: length-aware scheduling for fleets of SGLang instances.

The decision math lives in the Rust core (`l4_sglang._core`), reached
through `l4_sglang.core`.
"""

from l4_sglang.core import (
    BUILD_PROFILE,
    CostModel,
    InstanceClass,
    InstanceLoad,
    Layout,
    Migration,
    QoeConfig,
    Stage,
    Workload,
    available_cost_models,
    diffuse_boundary,
    evaluate_layout,
    evaluate_layout_classes,
    log_bin_edges,
    merge_stages,
    move_value,
    partition,
    partition_classes,
    pick_instance,
    pick_marginal,
    pick_migration,
    predicted_work,
)

__version__ = "0.1.0"

__all__ = [
    "BUILD_PROFILE",
    "CostModel",
    "InstanceClass",
    "InstanceLoad",
    "Layout",
    "Migration",
    "QoeConfig",
    "Stage",
    "Workload",
    "__version__",
    "available_cost_models",
    "diffuse_boundary",
    "evaluate_layout",
    "evaluate_layout_classes",
    "log_bin_edges",
    "merge_stages",
    "move_value",
    "partition",
    "partition_classes",
    "pick_instance",
    "pick_marginal",
    "pick_migration",
    "predicted_work",
]
