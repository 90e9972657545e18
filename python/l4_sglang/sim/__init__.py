"""Discrete-event simulator: the router's policies over simulated emulated-worker engines."""

from l4_sglang.sim.cluster import Cluster, engine_config
from l4_sglang.sim.engine import EventLoop, Kind
from l4_sglang.sim.metrics import LayoutSample, RequestRecord, SimResult
from l4_sglang.sim.run import Simulator, simulate

__all__ = [
    "Cluster",
    "EventLoop",
    "Kind",
    "LayoutSample",
    "RequestRecord",
    "SimResult",
    "Simulator",
    "engine_config",
    "simulate",
]
