"""Plain worker requests: a client request that does not stream, asks for at most
`plain_max_new_tokens` new tokens and that the policy will not move goes to its worker as one
non-streaming request. It answers as a worker asked directly; anything else (a stream, a longer
request, a request the policy may move) stays on streamed legs; aborts, clients that leave and
workers that die, hang or stop are handled as on streamed legs."""

from __future__ import annotations

import contextlib
import json
import signal
import socket
import threading
from concurrent.futures import ThreadPoolExecutor

import pytest
from fleet_procs import worker_procs
from router_http import MODEL, FakeWorker, call, get_json, poll, post_json, sse, workers

from l4_sglang.router import BackgroundRouter, RouterSettings


@contextlib.contextmanager
def recording(router: BackgroundRouter):
    """The bodies of the plain worker requests the router sends meanwhile."""
    http = router.router.forwarder._http
    bodies: list[dict] = []
    post = http.post

    async def recorded(base_url, path, body, exchange=None):
        bodies.append(json.loads(body))
        return await post(base_url, path, body, exchange)

    http.post = recorded
    try:
        yield bodies
    finally:
        http.post = post


def _router(ws, **kw) -> BackgroundRouter:
    return BackgroundRouter(RouterSettings(worker_urls=tuple(w.url for w in ws), port=0, **kw))


def _strip(out: dict) -> tuple:
    meta = out["meta_info"]
    return (
        out["text"],
        out["output_ids"],
        meta["finish_reason"],
        meta["prompt_tokens"],
        meta["completion_tokens"],
    )


@pytest.fixture(scope="module")
def pair():
    with workers(2) as ws, _router(ws, policy="round_robin") as router:
        yield router, ws


GENERATE = [
    {"input_ids": list(range(100, 140)), "sampling_params": {"max_new_tokens": 16, "ignore_eos": True}},
    {"text": "Stop me", "sampling_params": {"max_new_tokens": 40, "stop": [" "]}},
    {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 0}},
    {"text": "Count", "sampling_params": {"max_new_tokens": 30, "min_new_tokens": 30}, "rid": "mine"},
]


@pytest.mark.parametrize("body", GENERATE)
def test_short_requests_go_plain_and_answer_as_the_worker(pair, body):
    router, ws = pair
    direct = post_json(ws[0].url + "/generate", {k: v for k, v in body.items() if k != "rid"})
    with recording(router) as sent:
        routed = post_json(router.url + "/generate", body)
    assert _strip(routed) == _strip(direct)
    meta = routed["meta_info"]
    assert meta["id"] == body.get("rid", meta["id"]) and meta["l4_migrations"] == []
    assert len(meta["l4_workers"]) == 1
    (leg,) = sent
    assert leg["stream"] is False and leg["sampling_params"] == body["sampling_params"]


def test_openai_and_batches_go_plain_too(pair):
    router, ws = pair
    chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi there"}], "max_tokens": 12}
    completion = {"model": MODEL, "prompt": "Hello there", "max_tokens": 12}
    batch = {"text": ["one", "two two", "three"], "sampling_params": {"max_new_tokens": 5}}
    with recording(router) as sent:
        a = post_json(router.url + "/v1/chat/completions", chat)
        c = post_json(router.url + "/v1/completions", completion)
        many = post_json(router.url + "/generate", batch)
    assert len(sent) == 5 and not any(leg["stream"] for leg in sent)
    b = post_json(ws[1].url + "/v1/chat/completions", chat)
    d = post_json(ws[1].url + "/v1/completions", completion)
    assert a["choices"][0]["message"]["content"] == b["choices"][0]["message"]["content"]
    assert a["usage"] == b["usage"] and a["choices"][0]["finish_reason"] == "length"
    assert c["choices"][0]["text"] == d["choices"][0]["text"] and c["usage"] == d["usage"]
    assert [_strip(x) for x in many] == [_strip(x) for x in post_json(ws[0].url + "/generate", batch)]


def test_streams_and_long_requests_stay_streamed(pair):
    router, _ = pair
    short = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 8}}
    long = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 1025, "ignore_eos": True}}
    with recording(router) as sent:
        assert sse(router.url + "/generate", {**short, "stream": True})[-1] == "[DONE]"
        assert post_json(router.url + "/generate", long)["meta_info"]["completion_tokens"] == 1025
        chat = {"model": MODEL, "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 1025}
        assert post_json(router.url + "/v1/chat/completions", chat)["usage"]["completion_tokens"] > 0
    assert sent == []


@pytest.mark.parametrize(
    "n, settings, new, plain",
    [
        (1, {"policy": "l4"}, 8, True),  # one stage of one worker: nothing to move to
        (2, {"policy": "l4"}, 64, False),  # a stage of two: a balance move may pick it
        (2, {"policy": "l4"}, 8, True),  # ... unless it asks for fewer than --l4-pair-min-remaining
        (2, {"policy": "l4", "policy_overrides": {"pair_min_remaining": 0}}, 8, False),
        (2, {"policy": "llumnix"}, 8, False),
        (2, {"policy": "llumnix", "policy_overrides": {"migration": False}}, 8, True),
        (2, {"policy": "least_load"}, 8, True),
        (1, {"policy": "round_robin", "plain_max_new_tokens": 0}, 8, False),
        (1, {"policy": "round_robin", "plain_max_new_tokens": 8}, 8, True),
    ],
)
def test_the_policy_and_the_setting_decide(n, settings, new, plain):
    body = {"input_ids": [9, 8, 7], "sampling_params": {"max_new_tokens": new, "ignore_eos": True}}
    with workers(n) as ws, _router(ws, **settings) as router:
        want = post_json(ws[0].url + "/generate", body)
        with recording(router) as sent:
            assert _strip(post_json(router.url + "/generate", body)) == _strip(want)
        assert bool(sent) is plain


def _abort_on_loads(url: str) -> bool:
    return get_json(url + "/v1/loads")["aggregate"]["total_reqs"] == 0


def test_abort_request_ends_a_plain_request_with_what_it_has():
    body = {
        "input_ids": [1, 2, 3],
        "rid": "p-1",
        "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True},
    }
    with workers(1, time_scale=0.5) as ws, _router(ws, policy="round_robin") as router:
        result = {}
        with recording(router) as sent:
            t = threading.Thread(target=lambda: result.update(out=post_json(router.url + "/generate", body)))
            t.start()
            # Abort only once a decode step has run (KV past the 3 prompt tokens): aborted any
            # earlier, SGLang rightly answers with no tokens at all.
            poll(lambda: get_json(ws[0].url + "/v1/loads")["aggregate"]["total_used_tokens"] > 3, timeout=20)
            poll(lambda: call("POST", router.url + "/abort_request", {"rid": "p-1"})[0] == 200)
            t.join(20)
        assert len(sent) == 1
        meta = result["out"]["meta_info"]
        assert meta["finish_reason"] == {"type": "abort", "message": "Abort by /abort_request"}
        assert meta["id"] == "p-1" and 0 < meta["completion_tokens"] < 1000
        assert len(result["out"]["output_ids"]) == meta["completion_tokens"]
        poll(lambda: _abort_on_loads(ws[0].url), timeout=10)


def test_a_client_that_leaves_a_plain_request_aborts_it_on_the_worker():
    body = json.dumps(
        {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 1000, "ignore_eos": True}}
    )
    with workers(1, time_scale=0.5) as ws, _router(ws, policy="round_robin") as router:
        with recording(router) as sent:
            sock = socket.create_connection(("127.0.0.1", router.router.port))
            sock.sendall(
                b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
                b"Content-Length: %d\r\n\r\n%s" % (len(body), body.encode())
            )
            poll(
                lambda: get_json(ws[0].url + "/v1/loads")["aggregate"]["total_running_reqs"] == 1, timeout=20
            )
            sock.close()
            poll(lambda: _abort_on_loads(ws[0].url), timeout=2)  # it would run ~3 s more
        assert len(sent) == 1


def _expected(url: str, n: int, tokens: int) -> list[list[int]]:
    sp = {"max_new_tokens": tokens, "ignore_eos": True}
    with ThreadPoolExecutor(n) as pool:
        outs = pool.map(
            lambda i: post_json(url + "/generate", {"input_ids": [i + 1, 2, 3], "sampling_params": sp}),
            range(n),
        )
        return [o["output_ids"] for o in outs]


def _send_all(url: str, n: int, tokens: int) -> list[dict]:
    sp = {"max_new_tokens": tokens, "ignore_eos": True}
    with ThreadPoolExecutor(n) as pool:
        return list(
            pool.map(
                lambda i: post_json(url + "/generate", {"input_ids": [i + 1, 2, 3], "sampling_params": sp}),
                range(n),
            )
        )


@pytest.mark.parametrize("fault", ["SIGKILL", "SIGSTOP"])
def test_plain_requests_on_a_dead_or_hung_worker_run_again_elsewhere(tmp_path, fault):
    n, tokens = 12, 1000
    with worker_procs(tmp_path, 2, 0.3) as ws:
        expected = _expected(ws[1].url, n, tokens)
        settings = {"policy": "round_robin", "load_poll_interval": 0.1, "health_timeout": 0.5}
        with _router(ws, **settings) as router, recording(router) as sent:
            victim = ws[0]
            results = {}
            t = threading.Thread(target=lambda: results.update(out=_send_all(router.url, n, tokens)))
            t.start()
            poll(
                lambda: get_json(victim.url + "/v1/loads")["aggregate"]["total_running_reqs"] >= n // 2 - 1,
                timeout=30,
            )
            sig = getattr(signal, fault)
            try:
                if fault == "SIGKILL":
                    victim.stop(sig)
                else:
                    victim.proc.proc.send_signal(sig)
                t.join(60)
                assert not t.is_alive()
                healthy = {w["url"]: w["healthy"] for w in get_json(router.url + "/workers")["workers"]}
                assert healthy[victim.url] is False
            finally:
                if fault == "SIGSTOP":
                    victim.proc.proc.send_signal(signal.SIGCONT)
            got = results["out"]
            assert [o["output_ids"] for o in got] == expected
            assert all(o["meta_info"]["finish_reason"] == {"type": "length", "length": tokens} for o in got)
            assert all(o["meta_info"]["l4_workers"] == [ws[1].url] for o in got)  # the victim's ran again
            again = [leg for leg in sent if leg["rid"].endswith("-2")]
            assert len(again) == n // 2 and len(sent) == n + n // 2 and not any(leg["stream"] for leg in sent)
            if fault == "SIGSTOP":  # once awake, the hung worker was told to drop them
                poll(lambda: _abort_on_loads(victim.url), timeout=30)


def test_a_worker_that_stops_hands_its_plain_requests_on():
    n, tokens = 6, 1000
    with workers(2, time_scale=0.5) as ws:
        expected = _expected(ws[1].url, n, tokens)
        with _router(ws, policy="round_robin") as router:
            results = {}
            t = threading.Thread(target=lambda: results.update(out=_send_all(router.url, n, tokens)))
            t.start()
            poll(
                lambda: get_json(ws[0].url + "/v1/loads")["aggregate"]["total_running_reqs"] == n // 2,
                timeout=20,
            )
            ws[0].stop()
            t.join(60)
            assert [o["output_ids"] for o in results["out"]] == expected


def test_a_worker_answering_5xx_is_ejected_and_the_request_runs_elsewhere():
    broken = FakeWorker({("GET", "/health"): (200, ""), ("POST", "/generate"): (500, "boom")})
    try:
        with workers(1) as ws, _router([broken, *ws], policy="round_robin") as router:
            body = {"input_ids": [4, 5, 6], "sampling_params": {"max_new_tokens": 6}}
            want = post_json(ws[0].url + "/generate", body)
            for _ in range(3):
                assert _strip(post_json(router.url + "/generate", body)) == _strip(want)
            healthy = {w["url"]: w["healthy"] for w in get_json(router.url + "/workers")["workers"]}
            assert healthy == {broken.url: False, ws[0].url: True}
    finally:
        broken.stop()
