"""Routing policies: one interface (`base.Policy`), one file per policy, one registry.

Policies never read a clock or do I/O: the router and the simulator push
events with `now` through one `PolicyDriver` and get decisions back.
"""

from l4_sglang.policy.base import (
    LayoutView,
    Migration,
    NoWorkerAvailable,
    Policy,
    PolicyConfig,
    RequestInfo,
    StageView,
    WorkerSnapshot,
)
from l4_sglang.policy.driver import PolicyDriver
from l4_sglang.policy.registry import POLICIES, ConfigField, make_config, make_policy, policy_config_fields

__all__ = [
    "POLICIES",
    "ConfigField",
    "LayoutView",
    "Migration",
    "NoWorkerAvailable",
    "Policy",
    "PolicyConfig",
    "PolicyDriver",
    "RequestInfo",
    "StageView",
    "WorkerSnapshot",
    "make_config",
    "make_policy",
    "policy_config_fields",
]
