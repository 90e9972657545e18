"""The router's APIs against a worker asked directly: same ids, text, usage and finish, every shape."""

import itertools
import json
import threading

import openai
import pytest
from router_http import MODEL, call, get_json, metric, poll, post_json, sse, workers

from l4_sglang.router import BackgroundRouter, RouterSettings


@pytest.fixture(scope="module")
def fleet():
    with (
        workers(2) as ws,
        BackgroundRouter(
            RouterSettings(worker_urls=tuple(w.url for w in ws), port=0, policy="round_robin")
        ) as router,
    ):
        yield router, ws


def _strip(out: dict) -> tuple:
    meta = out["meta_info"]
    return (
        out.get("text"),
        out["output_ids"],
        meta["finish_reason"],
        meta["prompt_tokens"],
        meta["completion_tokens"],
    )


@pytest.mark.parametrize(
    "body",
    [
        {"text": "The capital of France is", "sampling_params": {"max_new_tokens": 24}},
        {"input_ids": list(range(100, 400)), "sampling_params": {"max_new_tokens": 40, "ignore_eos": True}},
        {"text": "Once upon a time", "sampling_params": {"max_new_tokens": 0}},
        {"text": "Count: 1 2 3", "sampling_params": {"max_new_tokens": 30, "min_new_tokens": 30}},
    ],
)
def test_generate_matches_a_direct_worker(fleet, body):
    router, ws = fleet
    direct = post_json(ws[0].url + "/generate", body)
    routed = post_json(router.url + "/generate", body)
    assert _strip(routed) == _strip(direct)
    assert routed["meta_info"]["l4_workers"] and routed["meta_info"]["l4_migrations"] == []
    events = sse(router.url + "/generate", {**body, "stream": True})
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    assert _strip(chunks[-1])[:3] == _strip(direct)[:3]
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])
    for a, b in itertools.pairwise(chunks):  # cumulative ids and text
        assert b["output_ids"][: len(a["output_ids"])] == a["output_ids"]
        assert b["text"].startswith(a["text"])


def test_stop_strings_cut_the_text_as_the_worker_does(fleet):
    router, ws = fleet
    ref = post_json(ws[0].url + "/generate", {"text": "Stop me", "sampling_params": {"max_new_tokens": 40}})
    stop = ref["text"][40:45]
    body = {"text": "Stop me", "sampling_params": {"max_new_tokens": 40, "stop": [stop]}}
    direct = post_json(ws[1].url + "/generate", body)
    assert direct["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert _strip(post_json(router.url + "/generate", body)) == _strip(direct)
    last = json.loads(sse(router.url + "/generate", {**body, "stream": True})[-2])
    assert _strip(last)[:3] == _strip(direct)[:3]


def test_a_batch_of_prompts(fleet):
    router, ws = fleet
    body = {"text": ["one", "two two", "three three three"], "sampling_params": {"max_new_tokens": 5}}
    direct = post_json(ws[0].url + "/generate", body)
    routed = post_json(router.url + "/generate", body)
    assert [_strip(x) for x in routed] == [_strip(x) for x in direct]


def test_openai_chat_and_completions_match_a_direct_worker(fleet):
    router, ws = fleet
    via = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=60)
    direct = openai.OpenAI(base_url=ws[0].url + "/v1", api_key="x", max_retries=0, timeout=60)
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Tell me a story."}]
    a = via.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    b = direct.chat.completions.create(model=MODEL, messages=messages, max_tokens=20)
    assert a.choices[0].message.content == b.choices[0].message.content
    assert a.choices[0].finish_reason == b.choices[0].finish_reason == "length"
    assert a.usage.prompt_tokens == b.usage.prompt_tokens and a.usage.completion_tokens == 20

    stream = via.chat.completions.create(
        model=MODEL, messages=messages, max_tokens=20, stream=True, stream_options={"include_usage": True}
    )
    pieces, finish, usage = [], None, None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
        if chunk.usage is not None:
            usage = chunk.usage
    assert "".join(pieces) == b.choices[0].message.content
    assert (
        finish == "length" and usage.completion_tokens == 20 and usage.prompt_tokens == b.usage.prompt_tokens
    )

    c = via.completions.create(model=MODEL, prompt="Hello there", max_tokens=12)
    d = direct.completions.create(model=MODEL, prompt="Hello there", max_tokens=12)
    assert c.choices[0].text == d.choices[0].text and c.usage == d.usage
    text = "".join(
        ch.choices[0].text
        for ch in via.completions.create(model=MODEL, prompt="Hello there", max_tokens=12, stream=True)
    )
    assert text == d.choices[0].text
    default = via.completions.create(model=MODEL, prompt=[1, 2, 3])
    assert default.usage.completion_tokens == 16  # OpenAI's default max_tokens for completions


def test_info_routes(fleet):
    router, ws = fleet
    assert get_json(router.url + "/health")["healthy_workers"] == 2
    models = get_json(router.url + "/v1/models")
    assert models["data"][0]["id"] == MODEL and models["data"][0]["max_model_len"] == 131072
    listed = get_json(router.url + "/workers")
    assert listed["policy"] == "round_robin"
    assert {w["url"] for w in listed["workers"]} == {w.url for w in ws}
    assert all(w["healthy"] and w["load_source"] == "/v1/loads" for w in listed["workers"])
    assert get_json(router.url + "/l4/stages") == {"policy": "round_robin", "stages": []}
    post_json(router.url + "/generate", {"text": "count me", "sampling_params": {"max_new_tokens": 3}})
    _, headers, text = call("GET", router.url + "/metrics")
    assert headers["Content-Type"].startswith("text/plain")
    assert metric(text, "l4_router_requests_total", route="/generate", status="200") >= 1
    assert metric(text, "l4_router_ttft_seconds_count", route="/generate") >= 1
    assert metric(text, "l4_router_added_latency_seconds_count", route="/generate") >= 1
    assert metric(text, "l4_router_worker_healthy") == 2
    assert metric(text, "l4_router_worker_max_total_tokens") > 0
    assert metric(text, "l4_router_stages") == 0


def test_client_rid_is_echoed_and_abort_request_ends_it(fleet):
    router, ws = fleet
    out = post_json(
        router.url + "/generate", {"text": "x", "rid": "mine-1", "sampling_params": {"max_new_tokens": 2}}
    )
    assert out["meta_info"]["id"] == "mine-1"
    result = {}

    def long_one():
        body = {
            "text": "y",
            "rid": "mine-2",
            "sampling_params": {"max_new_tokens": 100000, "ignore_eos": True},
        }
        result["out"] = post_json(router.url + "/generate", body)

    def generated():
        return metric(call("GET", router.url + "/metrics")[2], "l4_router_generation_tokens_total")

    before = generated()
    t = threading.Thread(target=long_one)
    t.start()
    poll(lambda: generated() > before + 10)
    assert call("POST", router.url + "/abort_request", {"rid": "mine-2"})[0] == 200
    t.join(20)
    meta = result["out"]["meta_info"]
    assert meta["finish_reason"] == {"type": "abort", "message": "Abort by /abort_request"}
    assert meta["id"] == "mine-2" and 10 < meta["completion_tokens"] < 100000
    # ... and on its worker too.
    poll(lambda: all(get_json(w.url + "/v1/loads")["aggregate"]["total_reqs"] == 0 for w in ws))


def test_a_stream_aborted_by_rid_ends_with_a_final_chunk(fleet):
    router, _ = fleet
    body = {"text": "z", "rid": "mine-3", "stream": True, "sampling_params": {"max_new_tokens": 100000}}
    events: list[str] = []
    t = threading.Thread(target=lambda: events.extend(sse(router.url + "/generate", body)))
    t.start()

    def aborted():  # the abort may come before the request is there: repeat it until the stream ends
        assert call("POST", router.url + "/abort_request", {"rid": "mine-3"})[0] == 200
        t.join(0.3)
        return not t.is_alive()

    poll(aborted, timeout=20)
    assert events[-1] == "[DONE]"
    last = json.loads(events[-2])
    assert last["meta_info"]["finish_reason"]["type"] == "abort" and last["meta_info"]["id"] == "mine-3"


def test_a_chat_without_max_tokens_gets_the_same_budget_via_the_router_as_direct():
    # One rule for both (api_shapes.chat_open_ended_max_tokens): up to the context, never below 0,
    # as SGLang's scheduler. Prompts from short to filling the 64-token context.
    from l4_sglang import api_shapes

    assert [api_shapes.chat_open_ended_max_tokens(64, p) for p in (10, 62, 63, 64, 90)] == [53, 1, 0, 0, 0]
    with (
        workers(1, context_length=64) as ws,
        BackgroundRouter(RouterSettings(worker_urls=(ws[0].url,), port=0)) as router,
    ):
        for words in (1, 12, 47, 48, 49):  # prompts of 16, 27, 62, 63 and 64 tokens
            body = {"model": MODEL, "messages": [{"role": "user", "content": " ".join(["hi"] * words)}]}
            via = call("POST", router.url + "/v1/chat/completions", body)
            direct = call("POST", ws[0].url + "/v1/chat/completions", body)
            assert via[0] == direct[0], (words, via[2], direct[2])
            if via[0] == 200:
                got, want = json.loads(via[2])["usage"], json.loads(direct[2])["usage"]
                assert got == want and got["completion_tokens"] == 64 - got["prompt_tokens"] - 1
