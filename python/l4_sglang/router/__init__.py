"""The L4 router: an aiohttp server speaking SGLang's and OpenAI's APIs in front of SGLang workers.

Modules, one job each: `app` (routes, lifecycle), `forwarding` (one request's
life: send, stream, migrate, stitch), `http1` (the small HTTP/1.1 client
of the /generate legs, streamed and plain), `workers` (worker registry, health and
load polling, circuit breaker), `native` and `openai` (request and response
shapes), `metrics` (Prometheus text). The tokenizer is `l4_sglang.text`,
shared with the emulated worker. Every routing decision comes from the policy object
(`l4_sglang.policy`); the router only carries them out.
"""

from l4_sglang.router.app import BackgroundRouter, Router, RouterSettings

__all__ = ["BackgroundRouter", "Router", "RouterSettings"]
