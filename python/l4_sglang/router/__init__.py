"""The L4 router: an aiohttp server speaking SGLang's and OpenAI's APIs in front of SGLang workers.

Modules, one job each: `app` (the aiohttp app, middleware, lifecycle),
`settings` (RouterSettings), `generation_routes` and `status_routes` (the
handlers, mixins of `Router`), `admin` (SGLang's router-level endpoints),
`web_io` (JSON bodies in, JSON and SSE out), `native` and `openai` (request
and response shapes), `generation` (what a request asks for and what it got),
`forwarding` (one request's life: send, stream, stitch) with `plain_legs` and
`migration` (its mixins), `legs` (one worker request), `http1` (the small
HTTP/1.1 client of the /generate legs), `passthrough` (what goes to a
worker's own route), `workers` (worker registry, health and load polling,
circuit breaker), `metrics` (Prometheus text). The tokenizer is
`l4_sglang.text`, shared with the emulated worker. Every routing decision comes from the policy object
(`l4_sglang.policy`); the router only carries them out.
"""

from l4_sglang.router.app import BackgroundRouter, Router, RouterSettings

__all__ = ["BackgroundRouter", "Router", "RouterSettings"]
