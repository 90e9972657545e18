"""1,000 concurrent streaming clients through a router process over 4 emulated worker processes:
every stream completes with the right tokens and usage, and the router held them all at once."""

import asyncio
import json
import time

import aiohttp
from fleet_procs import RouterProc, worker_procs
from router_http import MODEL, call, get_json, metric, post_json

CLIENTS = 1000
VARIANTS = 10
NEW_TOKENS = 24


def _prompt(v: int) -> list[int]:
    return list(range(100 + 7 * v, 160 + 11 * v))


async def _client(session, url, i, sent, done):
    """One streaming client; returns what it needs to be checked: (kind, variant, final payloads)."""
    v = i % VARIANTS
    if i % 2:
        route, body = "/v1/completions", {
            "model": MODEL, "prompt": _prompt(v), "max_tokens": NEW_TOKENS, "ignore_eos": True,
            "stream": True, "stream_options": {"include_usage": True},
        }  # fmt: skip
    else:
        route, body = "/generate", {
            "input_ids": _prompt(v), "stream": True,
            "sampling_params": {"max_new_tokens": NEW_TOKENS, "ignore_eos": True},
        }  # fmt: skip
    sent[i] = time.monotonic()
    async with session.post(url + route, json=body) as resp:
        assert resp.status == 200, await resp.text()
        events = []
        async for line in resp.content:
            if line.startswith(b"data: "):
                events.append(line[6:].strip().decode())
    done[i] = time.monotonic()
    return route, v, events


def _max_overlap(sent: dict, done: dict) -> int:
    edges = sorted([(t, 1) for t in sent.values()] + [(t, -1) for t in done.values()])
    best = now = 0
    for _, step in edges:
        now += step
        best = max(best, now)
    return best


async def _run_clients(url: str):
    sent: dict[int, float] = {}
    done: dict[int, float] = {}
    connector = aiohttp.TCPConnector(limit=0)
    timeout = aiohttp.ClientTimeout(total=240)
    async with aiohttp.ClientSession(connector=connector, timeout=timeout) as session:
        results = await asyncio.gather(
            *(_client(session, url, i, sent, done) for i in range(CLIENTS)), return_exceptions=True
        )
    return results, _max_overlap(sent, done)


def test_a_thousand_concurrent_streams_all_complete(tmp_path):
    # Short outputs at real time: each stream lasts about a second of decode steps at full batch,
    # long enough that the clients overlap, short enough for a 2-core CI machine.
    with worker_procs(tmp_path, 4, 1.0, "--max-running-requests", "400") as ws:
        expect_ids, expect_text = {}, {}
        for v in range(VARIANTS):
            sp = {"max_new_tokens": NEW_TOKENS, "ignore_eos": True}
            body = {"input_ids": _prompt(v), "sampling_params": sp}
            expect_ids[v] = post_json(ws[0].url + "/generate", body)
            expect_text[v] = post_json(
                ws[1].url + "/v1/completions",
                {"model": MODEL, "prompt": _prompt(v), "max_tokens": NEW_TOKENS, "ignore_eos": True},
            )
        router = RouterProc(
            tmp_path / "router.log", [w.url for w in ws], "--policy", "least_load", "--log-level", "warning"
        )
        try:
            rss_before = router.rss_kib()
            started = time.monotonic()
            results, overlap = asyncio.run(_run_clients(router.url))
            wall = time.monotonic() - started
            rss_after = router.rss_kib()
            errors = [r for r in results if isinstance(r, BaseException)]
            assert not errors, f"{len(errors)} clients failed, first: {errors[0]!r}"
            for route, v, events in results:
                assert events[-1] == "[DONE]", events[-3:]
                if route == "/generate":
                    last = json.loads(events[-2])
                    assert last["output_ids"] == expect_ids[v]["output_ids"]
                    assert last["meta_info"]["completion_tokens"] == NEW_TOKENS
                    assert last["meta_info"]["prompt_tokens"] == len(_prompt(v))
                else:
                    chunks = [json.loads(e) for e in events[:-1]]
                    text = "".join(c["choices"][0]["text"] for c in chunks if c["choices"])
                    assert text == expect_text[v]["choices"][0]["text"]
                    assert chunks[-1]["usage"] == expect_text[v]["usage"]
            # All four workers took a share, and none was ejected on the way.
            states = get_json(router.url + "/workers")["workers"]
            assert [w["healthy"] for w in states] == [True] * 4
            _, _, text = call("GET", router.url + "/metrics")
            legs = {w["url"]: metric(text, "l4_router_worker_legs_total", worker=w["url"]) for w in states}
            assert sum(legs.values()) == CLIENTS, legs  # one leg each: nothing resumed elsewhere
            assert min(legs.values()) >= CLIENTS / 8, legs  # least_load: about a quarter each
            print(
                f"\n{CLIENTS} streams: all complete in {wall:.1f} s, at most {overlap} open at once; "
                f"router RSS {rss_before} -> {rss_after} KiB"
            )
            # Every client had its stream open at the same moment as most of the others.
            assert overlap >= 0.9 * CLIENTS
        finally:
            router.stop()
