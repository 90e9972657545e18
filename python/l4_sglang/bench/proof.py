"""`python -m l4_sglang.bench proof URL`: the requests of docs/gpu/launch_proof.sh, through a router in
front of real SGLang: `/health`, `/v1/models`, `/workers`, `/l4/stages`; `/generate` with
`input_ids`, plain and streamed; `/v1/completions` with a token-id prompt; 24 concurrent prompts of
64 to 65,536 tokens; an excerpt of the router's `/metrics`. Exit status 1 when any of them failed.
"""

from __future__ import annotations

import json
import random
import sys
import time
from concurrent.futures import ThreadPoolExecutor

from l4_sglang.bench.fleet_io import http


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, 120000) for _ in range(n)]


def run(base: str) -> int:
    rng = random.Random(0)
    failures = 0
    for path in ("/health", "/v1/models", "/workers", "/l4/stages"):
        status, body = http("GET", base + path, timeout=600)
        print(f"GET {path} -> {status} {body[:600]}")
    model = json.loads(http("GET", base + "/v1/models")[1])["data"][0]["id"]
    # One non-streaming and one streaming /generate with input_ids.
    gen = {"input_ids": ids(rng, 16), "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
    status, body = http("POST", base + "/generate", gen, timeout=600)
    out = json.loads(body)
    print(f"POST /generate -> {status} output_ids={out.get('output_ids')} meta_info={out.get('meta_info')}")
    failures += status != 200 or len(out.get("output_ids", [])) != 8
    status, body = http("POST", base + "/generate", {**gen, "stream": True}, timeout=600)
    chunks = [line for line in body.splitlines() if line.startswith("data:")]
    print(
        f"POST /generate stream -> {status}, {len(chunks)} data lines, last {chunks[-1] if chunks else None}"
    )
    failures += status != 200 or chunks[-1:] != ["data: [DONE]"]
    # OpenAI completions with a token-id prompt.
    comp = {"model": model, "prompt": ids(rng, 32), "max_tokens": 4}
    status, body = http("POST", base + "/v1/completions", comp, timeout=600)
    print(f"POST /v1/completions -> {status} {body[:400]}")
    failures += status != 200
    # A mixed-length set, all at once: short and long prompts.
    lengths = [64, 256, 1024, 4096, 16384, 65536] * 4
    started = time.monotonic()

    def one(n: int) -> tuple[int, int, float]:
        t = time.monotonic()
        body = {
            "input_ids": ids(random.Random(n * 7919 + t), n),
            "sampling_params": {"max_new_tokens": 32, "ignore_eos": True},
        }
        status, raw = http("POST", base + "/generate", body, timeout=600)
        meta = json.loads(raw).get("meta_info", {}) if status == 200 else {}
        return status, int(meta.get("prompt_tokens", -1)), time.monotonic() - t

    with ThreadPoolExecutor(len(lengths)) as pool:
        results = list(pool.map(one, lengths))
    ok = sum(s == 200 for s, _, _ in results)
    print(f"mixed set: {ok}/{len(results)} ok in {time.monotonic() - started:.1f} s")
    for n in sorted(set(lengths)):
        e2e = [r[2] for r, length in zip(results, lengths, strict=True) if length == n]
        print(f"  prompt {n:6d}: mean E2E {sum(e2e) / len(e2e):.2f} s")
    failures += ok != len(results)
    for path in ("/l4/stages", "/workers"):
        status, body = http("GET", base + path)
        print(f"GET {path} -> {status} {body[:1500]}")
    status, body = http("GET", base + "/metrics")
    keep = (
        "l4_router_worker_legs_total",
        "l4_router_stage",
        "l4_router_requests_total",
        "l4_router_migrations",
    )
    print("router /metrics (excerpt):")
    for line in body.splitlines():
        if line.startswith(keep):
            print("  " + line)
    print(f"failures: {failures}")
    return 1 if failures else 0


def main(argv: list[str]) -> int:
    if len(argv) != 1 or argv[0].startswith("-"):
        print("usage: python -m l4_sglang.bench proof URL   (e.g. http://127.0.0.1:30000)", file=sys.stderr)
        return 2
    return run(argv[0].rstrip("/"))
