"""`python -m l4_sglang.bench`: policies compared on a trace (simulation mode; live comes later)."""

from l4_sglang.bench.cli import SLO_THRESHOLD, main, oracle_e2e_s

__all__ = ["SLO_THRESHOLD", "main", "oracle_e2e_s"]
