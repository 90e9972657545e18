"""OpenAI features the router passes through (logprobs, n, tools, JSON mode, echo, batches),
through the openai SDK against emulated workers: the same answers as a worker asked directly."""

import http.client
import json
import urllib.parse

import openai
import pytest
from openai_cases import cases, collect_stream, messages
from router_http import MODEL, Scripted, call, get_json, metric, poll, workers

from l4_sglang.router import BackgroundRouter, RouterSettings

MESSAGES = messages()
CASES = cases()


@pytest.fixture(scope="module")
def fleet():
    policy = Scripted()
    with (
        workers(2) as ws,
        BackgroundRouter(RouterSettings(worker_urls=tuple(w.url for w in ws), port=0), policy=policy) as r,
    ):
        yield r, ws, policy


def _client(url: str) -> openai.OpenAI:
    return openai.OpenAI(base_url=url + "/v1", api_key="x", max_retries=0, timeout=60)


def _create(client: openai.OpenAI, route: str, extra: dict, **kw):
    if route == "chat":
        return client.chat.completions.create(model=MODEL, messages=MESSAGES, max_tokens=8, **extra, **kw)
    return client.completions.create(model=MODEL, max_tokens=8, **extra, **kw)


def _plain(resp) -> list[tuple]:
    out = []
    for c in resp.choices:
        text = c.message.content if hasattr(c, "message") else c.text
        lp = c.logprobs.model_dump() if c.logprobs is not None else None
        out.append((c.index, text, c.finish_reason, lp))
    return out


@pytest.mark.parametrize("case", CASES)
def test_a_feature_answers_as_the_worker_does(fleet, case):
    router, ws, _ = fleet
    route, extra, choices = CASES[case]
    via = _create(_client(router.url), route, extra)
    direct = _create(_client(ws[0].url), route, extra)
    assert _plain(via) == _plain(direct)
    assert [c.index for c in via.choices] == list(range(choices))
    assert via.usage == direct.usage and via.usage.completion_tokens == 8 * choices
    for c in via.choices:
        assert c.finish_reason == "length"
    if "echo" in extra:
        assert via.choices[0].text.startswith("Echo me") and len(via.choices[0].text) > len("Echo me")
    if route == "completions" and "logprobs" in extra:
        lp = via.choices[0].logprobs
        assert len(lp.tokens) == len(lp.token_logprobs) == len(lp.text_offset) == 8
        assert all(len(top) == extra["logprobs"] for top in lp.top_logprobs)
        assert "".join(lp.tokens) == via.choices[0].text.removeprefix("Echo me" if "echo" in extra else "")
    if route == "chat" and extra.get("logprobs"):
        content = via.choices[0].logprobs.content
        assert len(content) == 8 and all(len(t.top_logprobs) == extra["top_logprobs"] for t in content)
        assert "".join(t.token for t in content) == via.choices[0].message.content
        assert all(t.top_logprobs[0].logprob == t.logprob for t in content)
    if route == "completions" and isinstance(extra["prompt"], list):
        n = extra.get("n", 1)
        one = _client(router.url).completions.create(model=MODEL, prompt=extra["prompt"][1], max_tokens=8)
        assert via.choices[1 * n].text == one.choices[0].text  # index = prompt_i * n + j


@pytest.mark.parametrize("case", CASES)
def test_a_feature_streams_what_it_answers(fleet, case):
    router, _, _ = fleet
    route, extra, choices = CASES[case]
    client = _client(router.url)
    whole = _plain(_create(client, route, extra))
    stream = _create(client, route, extra, stream=True, stream_options={"include_usage": True})
    texts, finish, tokens, usage = collect_stream(stream, route)
    assert texts == {i: text for i, text, _, _ in whole}
    assert finish == {i: "length" for i in range(choices)}
    assert usage.completion_tokens == 8 * choices
    if extra.get("logprobs"):
        assert tokens == dict.fromkeys(range(choices), 8)


def test_plain_requests_still_take_the_router_path(fleet):
    router, _, _ = fleet
    status, headers, _ = call(
        "POST", router.url + "/v1/completions", {"model": MODEL, "prompt": "plain", "max_tokens": 2}
    )
    assert status == 200 and "x-l4-passthrough" not in headers
    body = {"model": MODEL, "prompt": "plain", "max_tokens": 2, "logprobs": 1}
    status, headers, _ = call("POST", router.url + "/v1/completions", body)
    assert status == 200 and headers["x-l4-passthrough"] == "logprobs"


@pytest.mark.parametrize(
    ("extra", "message"),
    [({"n": 0}, "n must be"), ({"logprobs": True, "top_logprobs": 50}, "top_logprobs must be")],
)
def test_a_workers_refusal_is_relayed(fleet, extra, message):
    router, ws, _ = fleet
    body = {"model": MODEL, "messages": MESSAGES, **extra}
    via = call("POST", router.url + "/v1/chat/completions", body)
    direct = call("POST", ws[0].url + "/v1/chat/completions", body)
    assert via[0] == direct[0] == 400
    assert json.loads(via[2]) == json.loads(direct[2]) and message in via[2]


def _open_stream(url: str, body: dict) -> tuple[http.client.HTTPConnection, http.client.HTTPResponse]:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.status == 200 and resp.getheader("x-l4-passthrough") == "n"
    return conn, resp


def _in_flight(router) -> float:
    return metric(call("GET", router.url + "/metrics")[2], "l4_router_requests_in_flight")


def test_a_passthrough_request_loads_its_worker_until_it_ends():
    policy = Scripted()
    # Real time (scale 1): 300 tokens take seconds, the checks below run while they are made.
    with (
        workers(1, time_scale=1.0) as ws,
        BackgroundRouter(RouterSettings(worker_urls=(ws[0].url,), port=0), policy=policy) as router,
    ):
        body = {"model": MODEL, "prompt": "long", "n": 2, "max_tokens": 300, "stream": True}
        conn, resp = _open_stream(router.url + "/v1/completions", body)
        rid = resp.getheader("x-l4-rid")
        try:
            assert resp.readline().startswith(b"data: ")
            assert policy.book.requests[rid].worker == ws[0].url
            assert _in_flight(router) == 1
            assert get_json(ws[0].url + "/v1/loads")["loads"][0]["num_running_reqs"] == 2
            rest = resp.read().decode()
        finally:
            conn.close()
        assert rest.endswith("data: [DONE]\n\n")
        poll(lambda: rid in policy.finished)
        assert rid not in policy.book.requests and rid not in policy.aborted
        assert _in_flight(router) == 0

        conn, resp = _open_stream(router.url + "/v1/completions", body)
        rid = resp.getheader("x-l4-rid")
        assert resp.readline().startswith(b"data: ")
        conn.close()  # the client leaves mid-stream
        poll(lambda: rid in policy.aborted)
        assert rid not in policy.book.requests
        poll(lambda: get_json(ws[0].url + "/v1/loads")["loads"][0]["num_running_reqs"] == 0)

        # /abort_request by the client's rid ends it on its worker; the stream ends with an error.
        conn, resp = _open_stream(router.url + "/v1/completions", {**body, "rid": "mine"})
        rid = resp.getheader("x-l4-rid")
        try:
            assert resp.readline().startswith(b"data: ")
            assert call("POST", router.url + "/abort_request", {"rid": "mine"})[0] == 200
            rest = resp.read().decode()
        finally:
            conn.close()
        events = [line[6:] for line in rest.splitlines() if line.startswith("data: ")]
        assert (
            events[-1] == "[DONE]" and json.loads(events[-2])["error"]["message"] == "Abort by /abort_request"
        )
        poll(lambda: rid in policy.aborted)
        poll(lambda: get_json(ws[0].url + "/v1/loads")["loads"][0]["num_running_reqs"] == 0)


def test_an_unreachable_worker_gives_a_clean_503_and_the_router_stays_up():
    with workers(1) as ws, BackgroundRouter(RouterSettings(worker_urls=(ws[0].url,), port=0)) as router:
        ws[0].stop()  # the router still counts it healthy: the pass-through finds it gone
        body = {"model": MODEL, "messages": MESSAGES, "n": 2, "max_tokens": 2}
        status, _, text = call("POST", router.url + "/v1/chat/completions", body)
        assert status == 503, text
        error = json.loads(text)["error"]
        assert error["code"] == 503 and "No worker available" in error["message"]
        assert call("GET", router.url + "/health")[0] == 503  # answered: no healthy worker left
        assert get_json(router.url + "/workers")["workers"][0]["healthy"] is False
