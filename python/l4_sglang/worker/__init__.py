"""The emulated SGLang worker: SGLang's HTTP API over a scheduler timed by the cost model.

engine.py        the scheduler state machine (pure; fake-clock testable)
prefix_cache.py  KV block cache keyed by block hashes
runner.py        drives the engine in real time on asyncio
protocol.py      /generate validation and response shapes
openai_api.py    /v1/completions and /v1/chat/completions shapes
server_info.py   /server_info, /model_info, /v1/loads, /get_load bodies
metrics.py       /metrics in SGLang's Prometheus names
server.py        the aiohttp app and its generation routes; `python -m l4_sglang.emulated_worker` serves it
status_routes.py health, info, load and control routes (a mixin of the app)
web_io.py        JSON bodies in, JSON and SSE out
vocab.py         which tokenizer the worker speaks (the tokenizers are in l4_sglang.text)
"""
