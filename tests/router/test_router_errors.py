"""Bad input gets a clean 4xx in the route's error shape and the router keeps serving;
an api key guards everything but /health and /metrics; bad command lines fail at start."""

import json
import os
import subprocess
import sys

import pytest
from router_http import MODEL, call, post_json, sse, workers

from l4_sglang.router import BackgroundRouter, RouterSettings


class Err:
    """Expected: this status, a message containing `needle`."""

    def __init__(self, status: int, needle: str) -> None:
        self.status, self.needle = status, needle


CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
CASES = [
    # (route, body or raw bytes, expected: Err or "ok")
    ("/generate", b"{not json", Err(400, "JSON decode error")),
    ("/generate", [], Err(400, "JSON object")),
    ("/generate", {"sampling_params": {}}, Err(400, "Either text or input_ids")),
    ("/generate", {"text": "a", "input_ids": [1]}, Err(400, "Only one of")),
    ("/generate", {"input_ids": []}, Err(400, "non-empty list")),
    ("/generate", {"input_ids": ["a"]}, Err(400, "token ids")),
    ("/generate", {"input_ids": [-1]}, Err(400, "token ids")),
    ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": -1}}, Err(400, "at least 0, got -1")),
    ("/generate", {"text": "a", "sampling_params": "x"}, Err(400, "sampling_params must be an object")),
    ("/generate", {"text": "a", "stream": "yes"}, Err(400, "stream must be a boolean")),
    ("/generate", {"text": ["a", "b"], "stream": True}, Err(400, "Batch requests with stream")),
    ("/generate", {"text": "a", "sampling_params": {"stop": 5}}, Err(400, "stop must be")),
    ("/generate", {"text": "a", "return_logprob": True}, Err(400, "return_logprob is not supported")),
    ("/generate", {"text": "a", "rid": 7}, Err(400, "rid must be a string")),
    # Checked by the worker, relayed by the router:
    ("/generate", {"text": "a", "sampling_params": {"top_p": 5}}, Err(400, "top_p must be in (0, 1]")),
    ("/generate", {"input_ids": [1] * 131072}, Err(400, "context length")),
    ("/generate", {"text": "fine", "sampling_params": {"max_new_tokens": 2}}, "ok"),
    ("/v1/chat/completions", b"[", Err(400, "JSON decode error")),
    ("/v1/chat/completions", {"messages": CHAT["messages"]}, Err(400, "model must be a string")),
    ("/v1/chat/completions", {**CHAT, "messages": []}, Err(400, "messages must be a non-empty list")),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "robot", "content": "x"}]}, Err(400, "role")),
    ("/v1/chat/completions", {**CHAT, "max_tokens": -1}, Err(400, "max_tokens must be")),
    # Passed through to the worker (router/passthrough.py), which checks them:
    ("/v1/chat/completions", {**CHAT, "n": 2}, "ok"),
    ("/v1/chat/completions", {**CHAT, "n": 0}, Err(400, "n must be an integer")),
    ("/v1/chat/completions", {**CHAT, "tools": [{"type": "function"}]}, Err(400, "tools must be a list")),
    ("/v1/chat/completions", {**CHAT, "temperature": "hot"}, Err(400, "temperature must be")),
    ("/v1/chat/completions", {**CHAT, "top_p": 5}, Err(400, "top_p must be in (0, 1]")),
    ("/v1/chat/completions", {**CHAT, "top_p": 5, "stream": True}, Err(400, "top_p must be in (0, 1]")),
    ("/v1/chat/completions", CHAT, "ok"),
    ("/v1/completions", {"model": MODEL}, Err(400, "prompt must be")),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", "b"], "max_tokens": 2}, "ok"),
    ("/v1/completions", {"model": MODEL, "prompt": ["a", 5]}, Err(400, "prompt must be")),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "echo": True, "max_tokens": 2}, "ok"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "logprobs": 2, "max_tokens": 2}, "ok"),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "logprobs": 99}, Err(400, "logprobs must be")),
    ("/v1/completions", {"model": MODEL, "prompt": "a", "max_tokens": 2}, "ok"),
    ("/workers", {"url": "not a url at all"}, Err(400, "invalid worker URL")),
    ("/abort_request", b"x", Err(400, "JSON decode error")),
]


@pytest.fixture(scope="module")
def router():
    with workers(1) as ws, BackgroundRouter(RouterSettings(worker_urls=(ws[0].url,), port=0)) as r:
        yield r


@pytest.mark.parametrize(("route", "body", "expected"), CASES)
def test_input_table(router, route, body, expected):
    raw = body if isinstance(body, bytes) else None
    status, headers, text = call("POST", router.url + route, None if raw else body, raw=raw)
    if expected == "ok":
        assert status == 200, text
        return
    assert status == expected.status, text
    assert headers["Content-Type"].startswith("application/json")
    err = json.loads(text)["error"]
    assert expected.needle in err["message"], err
    if route.startswith("/v1/"):
        assert err["code"] == expected.status and "type" in err and "param" in err
    # ... and the router keeps serving.
    assert post_json(router.url + "/generate", {"text": "ok", "sampling_params": {"max_new_tokens": 1}})


def test_unknown_routes_and_methods(router):
    status, _, text = call("GET", router.url + "/nope")
    assert status == 404 and "Not Found" in json.loads(text)["error"]["message"]
    assert call("GET", router.url + "/generate")[0] == 405
    assert call("GET", router.url + "/v1/nope")[0] == 404


def test_api_key_guards_all_but_health_and_metrics():
    with workers(1) as ws:
        settings = RouterSettings(worker_urls=(ws[0].url,), port=0, api_key="s3cret")
        with BackgroundRouter(settings) as r:
            good = {"Authorization": "Bearer s3cret"}
            body = {"text": "a", "sampling_params": {"max_new_tokens": 1}}
            assert call("POST", r.url + "/generate", body)[0] == 401
            assert call("POST", r.url + "/generate", body, headers={"Authorization": "Bearer nope"})[0] == 401
            assert call("POST", r.url + "/generate", body, headers=good)[0] == 200
            status, _, text = call("POST", r.url + "/v1/chat/completions", CHAT)
            assert status == 401 and json.loads(text)["error"]["type"] == "AuthenticationError"
            assert call("POST", r.url + "/workers", {"url": ws[0].url})[0] == 401
            assert call("DELETE", r.url + "/workers?url=" + ws[0].url)[0] == 401
            assert call("GET", r.url + "/workers")[0] == 401
            assert call("GET", r.url + "/workers", headers=good)[0] == 200
            assert call("GET", r.url + "/health")[0] == 200
            assert call("GET", r.url + "/metrics")[0] == 200


def test_streams_end_cleanly(router):
    events = sse(router.url + "/v1/chat/completions", {**CHAT, "stream": True})
    assert events[-1] == "[DONE]"
    assert json.loads(events[0])["choices"][0]["delta"]["role"] == "assistant"


def _cli(*args):
    return subprocess.run(
        [sys.executable, "-m", "l4_sglang.launch_router", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=dict(os.environ),
    )


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--policy", "nope"], "invalid choice: 'nope'"),
        (["--l4-bins", "many"], "--l4-bins: invalid bins"),
        (["--l4-max-utilization", "2"], "invalid max_utilization"),
        (["--llumnix-gap-threshold", "0.1"], "is a knob of policy 'llumnix'"),
        (["--cost-model", "no-such-model"], "unknown name"),
        (["--worker-urls", "ftp://x"], "invalid worker URL"),
        (["--tick-interval", "0"], "--tick-interval must be > 0"),
    ],
)
def test_bad_command_lines_fail_at_start(args, needle):
    run = _cli("--port", "1", *args)
    assert run.returncode == 2, run.stdout
    assert needle in run.stderr
    if args[:2] == ["--policy", "nope"]:
        assert "l4" in run.stderr and "round_robin" in run.stderr  # the choices are listed


def test_an_error_event_in_a_worker_stream_is_a_client_error():
    # Real SGLang answers a bad streaming request with 200 and an error event, not a 400.
    from router_http import FakeWorker

    stream = 'data: {"error": {"message": "max_new_tokens must be at least 0, got -1."}}\n\ndata: [DONE]\n\n'
    fake = FakeWorker({("GET", "/health"): (200, ""), ("POST", "/generate"): (200, stream)})
    try:
        with BackgroundRouter(RouterSettings(worker_urls=(fake.url,), port=0)) as r:
            status, _, text = call("POST", r.url + "/generate", {"text": "a"})
            assert status == 400 and "at least 0" in json.loads(text)["error"]["message"]
            status, _, text = call("POST", r.url + "/v1/chat/completions", {**CHAT, "stream": True})
            assert status == 400 and json.loads(text)["error"]["code"] == 400
    finally:
        fake.stop()


def test_a_policy_that_cannot_route_the_fleet_answers_503():
    with workers(1) as ws:  # static_buckets needs a worker per bucket
        settings = RouterSettings(worker_urls=(ws[0].url,), port=0, policy="static_buckets")
        with BackgroundRouter(settings) as r:
            status, _, text = call("POST", r.url + "/generate", {"text": "a"})
            assert status == 503 and "static_buckets policy cannot route" in text
