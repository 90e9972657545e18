"""SGLang's router-level endpoints through the router (router/admin.py), over real HTTP.

The requests `sgl.RuntimeEndpoint(url)` (sglang/lang/backend/runtime_endpoint.py, sglang 0.5.14)
makes are replayed as it makes them: GET /get_model_info at init (it reads `model_path`), POST
/flush_cache with no body, GET /server_info, POST /generate with `max_new_tokens` 0 (cache_prefix)
and with its full sampling params (generate, generate_stream: it reads `text` and `meta_info`).
"""

import json

import pytest
from router_http import MODEL, FakeWorker, call, get_json, workers

from l4_sglang.router import BackgroundRouter, RouterSettings

KEY = "sk-admin-test"


@pytest.fixture(scope="module")
def fleet():
    with (
        workers(2) as ws,
        BackgroundRouter(
            RouterSettings(worker_urls=tuple(w.url for w in ws), port=0, policy="round_robin", api_key=KEY)
        ) as router,
    ):
        yield router, ws


AUTH = {"Authorization": f"Bearer {KEY}"}


def _runtime_endpoint_call(url: str, body=None, method: str | None = None):
    """As sglang.utils.http_request: a JSON content type always, the api key as a bearer token."""
    method = method or ("POST" if body is not None else "GET")
    return call(method, url, body, headers={"Content-Type": "application/json; charset=utf-8", **AUTH})


@pytest.mark.parametrize("path", ["/get_model_info", "/model_info", "/get_server_info", "/server_info"])
def test_info_comes_from_a_worker(fleet, path):
    router, ws = fleet
    status, headers, text = _runtime_endpoint_call(router.url + path)
    assert status == 200, text
    assert headers["x-l4-worker"] in {w.url for w in ws}
    info = json.loads(text)
    assert info["model_path"] == MODEL
    if path.endswith("server_info"):  # live counters differ from one call to the next
        assert info["emulated"] is True and "internal_states" in info  # bench_serving reads these
    else:
        assert info == get_json(headers["x-l4-worker"] + path) and info["is_generation"] is True


def test_info_needs_the_api_key(fleet):
    router, _ = fleet
    assert call("GET", router.url + "/get_model_info")[0] == 401
    assert call("POST", router.url + "/flush_cache")[0] == 401


def test_runtime_endpoint_requests(fleet):
    """Every request RuntimeEndpoint makes for init, flush_cache, get_server_info, cache_prefix,
    generate and generate_stream, and the fields it reads from each answer."""
    router, _ = fleet
    status, _, text = _runtime_endpoint_call(router.url + "/get_model_info")
    assert status == 200 and json.loads(text)["model_path"] == MODEL
    assert _runtime_endpoint_call(router.url + "/flush_cache", method="POST")[0] == 200
    status, _, text = _runtime_endpoint_call(router.url + "/server_info")
    assert status == 200 and isinstance(json.loads(text), dict)
    prefix = {"text": "You are a helpful assistant.", "sampling_params": {"max_new_tokens": 0}}
    assert _runtime_endpoint_call(router.url + "/generate", prefix)[0] == 200
    srt_kwargs = {  # SglSamplingParams().to_srt_kwargs() with max_new_tokens 16, as JSON
        "max_new_tokens": 16, "min_new_tokens": 0, "n": 1, "stop": [], "stop_token_ids": [],
        "stop_regex": [], "temperature": 1.0, "top_p": 1.0, "top_k": -1, "min_p": 0.0,
        "frequency_penalty": 0.0, "presence_penalty": 0.0, "ignore_eos": False, "regex": None,
        "json_schema": None,
    }  # fmt: skip
    sampling = {"skip_special_tokens": True, "spaces_between_special_tokens": True, **srt_kwargs}
    body = {"text": "You are a helpful assistant. Hello", "sampling_params": sampling}
    status, _, text = _runtime_endpoint_call(router.url + "/generate", body)
    assert status == 200, text
    out = json.loads(text)
    assert isinstance(out["text"], str) and out["meta_info"]["completion_tokens"] == 16
    status, _, text = _runtime_endpoint_call(router.url + "/generate", {**body, "stream": True})
    assert status == 200, text
    events = [line[len("data:") :].strip() for line in text.splitlines() if line.startswith("data:")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert all(isinstance(c["text"], str) and "meta_info" in c for c in chunks)
    assert chunks[-1]["text"] == out["text"]


def _cached_tokens(url: str, prompt: list[int]) -> int:
    body = {"input_ids": prompt, "sampling_params": {"max_new_tokens": 1}}
    status, _, text = call("POST", url + "/generate", body)
    assert status == 200, text
    return json.loads(text)["meta_info"]["cached_tokens"]


@pytest.mark.parametrize("method", ["POST", "GET"])
def test_flush_cache_flushes_every_worker(fleet, method):
    router, ws = fleet
    prompt = list(range(1000, 1600))
    for w in ws:
        _cached_tokens(w.url, prompt)
        assert _cached_tokens(w.url, prompt) > 0
    status, _, text = call(method, router.url + "/flush_cache", headers=AUTH)
    assert status == 200, text
    body = json.loads(text)
    assert body["status"] == "success" and body["workers_flushed"] == body["total_workers"] == 2
    assert sorted(body["successful"]) == sorted(w.url for w in ws) and body["failed"] == []
    assert body["message"] == "Successfully flushed cache on all 2 workers"
    for w in ws:
        assert _cached_tokens(w.url, prompt) == 0


def _fake(flush: tuple[int, str], health_generate: tuple[int, str] = (200, "")) -> FakeWorker:
    return FakeWorker(
        {
            ("GET", "/health"): (200, ""),
            ("GET", "/server_info"): (200, json.dumps({"model_path": MODEL, "context_length": 8192})),
            ("POST", "/flush_cache"): flush,
            ("GET", "/health_generate"): health_generate,
        }
    )


def test_flush_cache_reports_each_worker_that_fails():
    busy = "Flush cache failed: requests are running.\n"
    good, bad = _fake((200, "Cache flushed.\n")), _fake((400, busy))
    try:
        urls = (good.url, bad.url)
        with BackgroundRouter(RouterSettings(worker_urls=urls, port=0, policy="round_robin")) as router:
            status, _, text = call("POST", router.url + "/flush_cache?timeout=1")
            assert status == 206, text
            body = json.loads(text)
            assert body["status"] == "partial_success" and body["workers_flushed"] == 1
            assert body["message"] == "Cache flush: 1 succeeded, 1 failed"
            assert body["successful"] == [good.url]
            [failed] = body["failed"]
            assert failed["worker"] == bad.url and f"HTTP 400: {busy.strip()}" in failed["error"]
        with BackgroundRouter(RouterSettings(worker_urls=(bad.url,), port=0, policy="round_robin")) as router:
            status, _, text = call("POST", router.url + "/flush_cache")
            assert status == 502 and json.loads(text)["status"] == "failed", text
            assert call("POST", router.url + "/flush_cache?timeout=soon")[0] == 400
    finally:
        good.stop()
        bad.stop()


def test_without_workers_the_admin_routes_say_so():
    with BackgroundRouter(RouterSettings(port=0, policy="round_robin")) as router:
        for method, path in (
            ("POST", "/flush_cache"),
            ("GET", "/get_model_info"),
            ("GET", "/health_generate"),
        ):
            status, _, text = call(method, router.url + path)
            assert status == 503 and json.loads(text)["error"]["message"], (path, text)


def test_health_generate_runs_on_a_worker(fleet):
    router, ws = fleet
    seen = set()
    for _ in range(2):
        status, headers, _ = call("GET", router.url + "/health_generate")  # open, as SGLang's /health*
        assert status == 200
        seen.add(headers["x-l4-worker"])
    assert seen == {w.url for w in ws}  # the workers take turns


def test_health_generate_skips_a_worker_that_cannot_generate():
    sick, well = _fake((200, ""), (503, "")), _fake((200, ""), (200, ""))
    try:
        settings = RouterSettings(worker_urls=(sick.url,), port=0, policy="round_robin")
        with BackgroundRouter(settings) as router:
            status, _, text = call("GET", router.url + "/health_generate")
            assert status == 503, text
            assert json.loads(text)["failed"] == [{"worker": sick.url, "error": "HTTP 503"}]
            status, _, _ = call("POST", router.url + "/workers", {"url": well.url})
            assert status == 200
            for _ in range(2):  # whichever worker is asked first
                status, headers, _ = call("GET", router.url + "/health_generate")
                assert status == 200 and headers["x-l4-worker"] == well.url
    finally:
        sick.stop()
        well.stop()


def test_model_card_by_id(fleet):
    router, _ = fleet
    card = get_json(router.url + f"/v1/models/{MODEL}", headers=AUTH)
    listed = get_json(router.url + "/v1/models", headers=AUTH)["data"][0]
    card.pop("created"), listed.pop("created")
    assert card == listed
    assert card["id"] == MODEL and card["object"] == "model" and card["max_model_len"] > 0
    status, _, text = call("GET", router.url + "/v1/models/no-such-model", headers=AUTH)
    assert status == 404
    err = json.loads(text)["error"]
    assert err["param"] == "model" and "no-such-model" in err["message"]
