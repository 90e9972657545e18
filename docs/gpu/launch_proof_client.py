"""Requests for docs/gpu/launch_proof.sh: input_ids through the router to real SGLang (stdlib only).

python3 docs/gpu/launch_proof_client.py http://127.0.0.1:30000
"""

import json
import random
import sys
import time
import urllib.request
from concurrent.futures import ThreadPoolExecutor


def call(url: str, body: dict | None = None, timeout: float = 600) -> tuple[int, bytes]:
    data = None if body is None else json.dumps(body).encode()
    req = urllib.request.Request(url, data=data, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.read()
    except urllib.error.HTTPError as e:
        return e.code, e.read()


def ids(rng: random.Random, n: int) -> list[int]:
    return [rng.randrange(1000, 120000) for _ in range(n)]


def main(base: str) -> int:
    rng = random.Random(0)
    failures = 0
    for path in ("/health", "/v1/models", "/workers", "/l4/stages"):
        status, body = call(base + path)
        print(f"GET {path} -> {status} {body.decode()[:600]}")
    model = json.loads(call(base + "/v1/models")[1])["data"][0]["id"]
    # One non-streaming and one streaming /generate with input_ids.
    gen = {"input_ids": ids(rng, 16), "sampling_params": {"max_new_tokens": 8, "ignore_eos": True}}
    status, body = call(base + "/generate", gen)
    out = json.loads(body)
    print(f"POST /generate -> {status} output_ids={out.get('output_ids')} meta_info={out.get('meta_info')}")
    failures += status != 200 or len(out.get("output_ids", [])) != 8
    status, body = call(base + "/generate", {**gen, "stream": True})
    chunks = [line for line in body.decode().splitlines() if line.startswith("data:")]
    print(
        f"POST /generate stream -> {status}, {len(chunks)} data lines, last {chunks[-1] if chunks else None}"
    )
    failures += status != 200 or chunks[-1:] != ["data: [DONE]"]
    # OpenAI completions with a token-id prompt.
    comp = {"model": model, "prompt": ids(rng, 32), "max_tokens": 4}
    status, body = call(base + "/v1/completions", comp)
    print(f"POST /v1/completions -> {status} {body.decode()[:400]}")
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
        status, raw = call(base + "/generate", body)
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
        status, body = call(base + path)
        print(f"GET {path} -> {status} {body.decode()[:1500]}")
    status, body = call(base + "/metrics")
    keep = (
        "l4_router_worker_legs_total",
        "l4_router_stage",
        "l4_router_requests_total",
        "l4_router_migrations",
    )
    print("router /metrics (excerpt):")
    for line in body.decode().splitlines():
        if line.startswith(keep):
            print("  " + line)
    print(f"failures: {failures}")
    return 1 if failures else 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
