"""L4 end to end: 4 emulated workers, the router as `python -m l4_sglang.launch_router --policy l4`.

The L4 knobs make it partition after a few requests (`--l4-min-samples 10
--l4-refine-interval-s 0.2`). A paced mix of short chats and ~3K-token
documents (20 requests/s, a quarter documents) makes the DP split the
fleet into a short and a long stage; then short and long requests must land
in different stages (the layout at /l4/stages against each worker's own
prompt-length histogram), and chats that grow past their stage's bound
while their stage is busy move down the pipeline with exactly the output
they would have had unmoved.
"""

import random
import time
from concurrent.futures import ThreadPoolExecutor

import openai
import pytest
from router_http import MODEL, Process, call, free_port, get_json, metric, poll, worker_prompt_counts, workers

SPLIT = 300  # a worker histogram bucket edge: chats are below it, documents far above
CHAT_WORDS = (5, 25)  # "hi there " repeats: chat prompts of about 40 to 120 tokens
DOC_WORDS = 600  # "document text " repeats: about 3000 tokens


@pytest.fixture(scope="module")
def l4(tmp_path_factory):
    with workers(4) as ws:
        port = free_port()
        flags = [
            "--policy",
            "l4",
            "--l4-min-samples",
            "10",
            "--l4-refine-interval-s",
            "0.2",
            "--l4-bins",
            "16",
        ]
        log = tmp_path_factory.mktemp("l4") / "router.log"
        router = Process(
            "-m", "l4_sglang.launch_router", "--port", str(port), "--load-poll-interval", "0.1",
            "--worker-urls", *[w.url for w in ws], *flags, log_path=log,
        )  # fmt: skip
        url = f"http://127.0.0.1:{port}"
        try:
            poll(lambda: _healthy(url, router), timeout=30, interval=0.1)
            yield url, ws
        finally:
            router.stop()
            assert "Traceback" not in router.output(), router.output()


def _healthy(url, router):
    if router.proc.poll() is not None:
        raise AssertionError(f"router exited: {router.output()}")
    try:
        return call("GET", url + "/health", timeout=1)[0] == 200
    except OSError:
        return False


def _paced(jobs, gap: float) -> list:
    start = time.monotonic()
    with ThreadPoolExecutor(16) as pool:
        futures = []
        for i, job in enumerate(jobs):
            time.sleep(max(0.0, start + i * gap - time.monotonic()))
            futures.append(pool.submit(job))
        return [f.result() for f in futures]


def _mix(client, rng, n: int, max_tokens: int = 16):
    def chat():
        words = "hi there " * rng.randint(*CHAT_WORDS)
        return client.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": words}], max_tokens=max_tokens
        )

    def document():
        return client.completions.create(
            model=MODEL, prompt="document text " * DOC_WORDS, max_tokens=max_tokens
        )

    jobs = [chat] * (n * 3 // 4) + [document] * (n - n * 3 // 4)
    rng.shuffle(jobs)
    return jobs


def test_short_and_long_requests_land_in_different_stages_and_grown_ones_move(l4):
    url, ws = l4
    rng = random.Random(0)
    client = openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=120)

    # Wave 1: learn the mix until the DP splits the fleet.
    _paced(_mix(client, rng, 40), gap=0.05)

    def split():
        found = get_json(url + "/l4/stages")
        return found if len(found["stages"]) >= 2 else None

    stages = poll(split, timeout=10)["stages"]
    assert stages[0]["lo_tokens"] == 0 and stages[-1]["hi_tokens"] is None
    assert sorted(w for s in stages for w in s["workers"]) == sorted(w.url for w in ws)
    assert stages[0]["hi_tokens"] < SPLIT  # chats below the first bound, documents above the last
    short_stage, long_stage = set(stages[0]["workers"]), set(stages[-1]["workers"])
    text = call("GET", url + "/metrics")[2]
    assert metric(text, "l4_router_stages") == len(stages)
    assert metric(text, "l4_router_stage_workers") == 4

    # Wave 2: every chat on a short-stage worker, every document on a long-stage one.
    before = {w.url: worker_prompt_counts(w.url, SPLIT) for w in ws}
    _paced(_mix(client, rng, 24), gap=0.05)
    after = {w.url: worker_prompt_counts(w.url, SPLIT) for w in ws}
    assert [s["workers"] for s in get_json(url + "/l4/stages")["stages"]] == [s["workers"] for s in stages]
    got = {u: (after[u][0] - before[u][0], after[u][1] - before[u][1]) for u in after}
    assert sum(s for s, _ in got.values()) == 18 and sum(x for _, x in got.values()) == 6
    for u, (short, long) in got.items():
        if u in short_stage:
            assert long == 0, got
        if u in long_stage:
            assert short == 0, got

    # Wave 3: chats that grow past the first bound while their stage is crowded move down the pipeline.
    prompts = ["hi there " * rng.randint(*CHAT_WORDS) for _ in range(16)]
    moved_before = metric(call("GET", url + "/metrics")[2], "l4_router_migrations_total", reason="pipeline")
    outs = _paced(
        [
            (lambda p=p: client.chat.completions.create(
                model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=300
            ))
            for p in prompts
        ],
        gap=0.0,
    )  # fmt: skip
    moved = metric(call("GET", url + "/metrics")[2], "l4_router_migrations_total", reason="pipeline")
    assert moved > moved_before
    direct = openai.OpenAI(base_url=ws[0].url + "/v1", api_key="x", max_retries=0, timeout=120)
    for p, out in zip(prompts, outs, strict=True):
        ref = direct.chat.completions.create(
            model=MODEL, messages=[{"role": "user", "content": p}], max_tokens=300
        )
        assert out.choices[0].message.content == ref.choices[0].message.content
        assert out.usage == ref.usage and out.choices[0].finish_reason == "length"
