"""The router's settings (`launch_router` builds them from its flags), checked as they are made."""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from l4_sglang.core import DEFAULT_COST_MODEL
from l4_sglang.router.workers import normalize_url


@dataclass(frozen=True)
class RouterSettings:
    worker_urls: tuple[str, ...] = ()
    policy: str = "l4"
    policy_overrides: Mapping[str, Any] = field(default_factory=dict)
    cost_model: str = DEFAULT_COST_MODEL
    tokenizer_path: str | None = None
    host: str = "127.0.0.1"
    port: int = 30000  # 0: any free port (Router.port once started)
    api_key: str | None = None
    worker_api_key: str | None = None
    load_poll_interval: float = 0.5
    tick_interval: float = 0.25
    seed: int = 0
    model_name: str | None = None
    default_max_tokens: int | None = None
    failure_threshold: int = 2
    health_timeout: float = 5.0
    # Workers emulated at this time scale: the policy's clock runs 1/scale times as fast, so its
    # rates and the cost model it prices them with share one time base.
    worker_time_scale: float = 1.0
    recovery_threshold: int = 2
    """Health checks in a row an ejected worker must pass to be taken back."""
    max_body_bytes: int = 32 * 1024**2
    body_timeout: float = 30.0
    header_timeout: float = 30.0
    drain_timeout: float = 30.0
    plain_max_new_tokens: int = 1024
    """A request that does not stream and asks for at most this many new tokens goes to its worker
    as one plain (non-streaming) request when the policy will not move it; 0: always stream."""

    def __post_init__(self) -> None:
        floats = ("load_poll_interval", "tick_interval", "health_timeout", "worker_time_scale")
        for name in (*floats, "body_timeout", "header_timeout", "drain_timeout"):
            value = getattr(self, name)
            if not (isinstance(value, int | float) and math.isfinite(value) and value > 0):
                raise ValueError(f"invalid {name}: must be > 0, got {value!r}")
        if self.default_max_tokens is not None and self.default_max_tokens < 1:
            raise ValueError(f"invalid default_max_tokens: must be >= 1, got {self.default_max_tokens}")
        for name in ("max_body_bytes", "failure_threshold", "recovery_threshold"):
            value = getattr(self, name)
            if not (isinstance(value, int) and not isinstance(value, bool) and value >= 1):
                raise ValueError(f"invalid {name}: must be an integer >= 1, got {value!r}")
        value = self.plain_max_new_tokens
        if not (isinstance(value, int) and not isinstance(value, bool) and value >= 0):
            raise ValueError(f"invalid plain_max_new_tokens: must be an integer >= 0, got {value!r}")
        for url in self.worker_urls:
            normalize_url(url)
