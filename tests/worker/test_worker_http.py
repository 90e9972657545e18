"""The emulated worker over real HTTP (in-process, on a background thread) against SGLang's samples."""

import http.client
import json
import re
import threading
import urllib.parse

import openai
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from worker_http import SAMPLES, call, get_json, poll, post_json, sse

from l4_sglang.text import builtin
from l4_sglang.worker.server import BackgroundWorker, WorkerSettings

FAST = 0.05  # time scale: 20x faster than the modelled GPU


@pytest.fixture(scope="module")
def worker():
    with BackgroundWorker(WorkerSettings(port=0, time_scale=FAST)) as w:
        yield w


@pytest.fixture(scope="module")
def other_worker():
    with BackgroundWorker(WorkerSettings(port=0, time_scale=FAST)) as w:
        yield w


def sample_json(name):
    return json.loads((SAMPLES / name).read_text())


def sample_stream():
    events = re.findall(r"^data: (.*)$", (SAMPLES / "generate_stream.txt").read_text(), re.M)
    return events


def running(url):
    return get_json(url + "/v1/loads")["loads"][0]["num_running_reqs"]


# ---- /generate against the samples --------------------------------------------


def test_generate_has_the_keys_of_real_sglang_in_order(worker):
    sample = sample_json("generate.json")
    ours = post_json(
        worker.url + "/generate", {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4}}
    )
    assert list(ours) == ["text", *sample]  # SGLang with a tokenizer adds `text` first
    assert list(ours["meta_info"]) == list(sample["meta_info"])
    meta = ours["meta_info"]
    assert meta["finish_reason"] == {"type": "length", "length": 4}
    assert (meta["prompt_tokens"], meta["completion_tokens"], meta["cached_tokens"]) == (4, 4, 0)
    assert len(ours["output_ids"]) == 4 and ours["text"] == builtin.decode(ours["output_ids"])
    for key, value in sample["meta_info"].items():
        if value is not None and key != "finish_reason":
            assert isinstance(meta[key], type(value)), key
    assert meta["request_received_ts"] <= meta["forward_entry_time"] <= meta["prefill_finished_time"]
    assert meta["prefill_finished_time"] <= meta["request_finished_ts"] <= meta["response_sent_to_client_ts"]


def test_generate_stream_matches_the_sample_framing_and_keys(worker):
    sample = [json.loads(e) for e in sample_stream()[:-1]]
    body = {
        "input_ids": [1, 2, 3, 4],
        "sampling_params": {"max_new_tokens": 4},
        "stream": True,
        "rid": "abc123",
    }
    events = sse(worker.url + "/generate", body)
    assert events[-1][1] == "[DONE]" and sample_stream()[-1] == "[DONE]"
    chunks = [json.loads(e) for _, e in events[:-1]]
    assert len(chunks) == len(sample) == 4
    final_ids = chunks[-1]["output_ids"]
    for i, (ours, real) in enumerate(zip(chunks, sample, strict=True)):
        assert list(ours) == ["text", *real]
        assert list(ours["meta_info"]) == list(real["meta_info"]), i
        assert ours["output_ids"] == final_ids[: i + 1]  # cumulative
        assert ours["meta_info"]["id"] == "abc123"
        assert ours["text"] == builtin.decode(ours["output_ids"])
    assert chunks[-1]["meta_info"]["finish_reason"] == {"type": "length", "length": 4}
    assert all(c["meta_info"]["finish_reason"] is None for c in chunks[:-1])


def test_text_prompts_count_a_bos_and_batches_return_lists(worker):
    out = post_json(
        worker.url + "/generate", {"text": "Hello world", "sampling_params": {"max_new_tokens": 3}}
    )
    assert out["meta_info"]["prompt_tokens"] == 1 + len(builtin.encode("Hello world"))
    batch = post_json(
        worker.url + "/generate",
        {"text": ["one", "two three"], "rid": ["b1", "b2"], "sampling_params": {"max_new_tokens": 2}},
    )
    assert [b["meta_info"]["id"] for b in batch] == ["b1", "b2"]
    assert all(b["meta_info"]["completion_tokens"] == 2 for b in batch)


def test_stop_strings_cut_the_text_as_sglang_does(worker):
    free = post_json(
        worker.url + "/generate", {"text": "stop here", "sampling_params": {"max_new_tokens": 12}}
    )
    stop = builtin.decode(free["output_ids"][5:7])
    out = post_json(
        worker.url + "/generate",
        {"text": "stop here", "sampling_params": {"max_new_tokens": 12, "stop": stop}},
    )
    assert out["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    assert out["output_ids"] == free["output_ids"][:7]
    assert out["text"] == builtin.decode(free["output_ids"][:5])


# ---- errors ---------------------------------------------------------------------


def test_validation_error_reads_like_the_sample(worker):
    status, headers, text = call(
        "POST",
        worker.url + "/generate",
        {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": -1}},
    )
    expected = (SAMPLES / "bad_generate.txt").read_text().splitlines()[0].rsplit(" ", 1)[0]
    assert (status, text) == (400, expected)
    assert headers["x-l4-emulated"] == "1"


def test_malformed_json_reads_like_the_sample(worker):
    status, _, text = call("POST", worker.url + "/generate", raw=b"{input_ids")
    real = json.loads((SAMPLES / "bad_generate.txt").read_text().splitlines()[1].rsplit(" ", 1)[0])
    ours = json.loads(text)
    assert status == 400 and list(ours) == list(real)
    assert ours["type"] == real["type"] and ours["code"] == 400
    assert "JSON decode error" in ours["message"] and "Expecting property name" in ours["message"]


@pytest.mark.parametrize(
    ("body", "needle"),
    [
        ({}, "Either text, input_ids"),
        ({"text": "a", "input_ids": [1]}, "Only one of"),
        ({"input_ids": []}, "must not be empty"),
        ({"input_ids": [1, builtin.VOCAB_SIZE]}, "out of range"),
        ({"input_ids": [1, "x"]}, "list of token ids"),
        ({"input_ids": [1], "sampling_params": {"max_new_tokens": 200_000}}, "maximum context length"),
        ({"input_ids": [1], "sampling_params": {"temperature": -1}}, "temperature"),
        ({"input_ids": [1], "sampling_params": {"top_p": 0}}, "top_p"),
        ({"input_ids": [[1], [2]], "stream": True}, "not supported"),
        ({"input_ids": [1], "rid": 5}, "rid"),
        ([1, 2], "JSON object"),
    ],
)
def test_bad_generate_requests_get_a_clean_400(worker, body, needle):
    status, _, text = call("POST", worker.url + "/generate", body)
    assert status == 400
    assert needle in json.loads(text)["error"]["message"]


def test_openai_routes_answer_errors_in_openai_shape(worker):
    for path, body in [
        ("/v1/chat/completions", None),
        ("/v1/completions", {"model": "m"}),
        ("/v1/chat/completions", {"model": "m", "messages": []}),
        ("/v1/completions", {"model": "m", "prompt": "x", "n": 0}),
    ]:
        status, _, text = call("POST", worker.url + path, body, raw=b"{nope" if body is None else None)
        assert status == 400, (path, text)
        error = json.loads(text)["error"]
        assert set(error) == {"message", "type", "param", "code"} and error["code"] == 400


def test_odd_unicode_in_ids_and_prompts_is_answered(worker):
    raw = b'{"text": "\\ud800 \\udfff \xf0\x9f\x99\x82", "rid": "r-\\ud800", '
    raw += b'"sampling_params": {"max_new_tokens": 2}}'
    status, _, text = call("POST", worker.url + "/generate", raw=raw)
    assert status == 200
    assert json.loads(text)["meta_info"]["id"] == "r-\ud800"
    events = sse(worker.url + "/generate", {"text": "\ud800", "rid": "s-\udfff", "stream": True})
    assert json.loads(events[-2][1])["meta_info"]["id"] == "s-\udfff"


_json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-3, 40) | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda inner: st.lists(inner, max_size=4) | st.dictionaries(st.text(max_size=6), inner, max_size=3),
    max_leaves=8,
)
_generate_keys = st.sampled_from(["text", "input_ids", "sampling_params", "stream", "rid", "hash_ids"])
_sampling = st.dictionaries(
    st.sampled_from(["max_new_tokens", "stop", "stop_token_ids", "temperature", "top_p", "ignore_eos", "n"]),
    _json_values,
    max_size=4,
)


@settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(body=st.dictionaries(_generate_keys, _json_values | _sampling, max_size=4), route=st.integers(0, 2))
def test_no_body_makes_the_server_fail(worker, body, route):
    path = ["/generate", "/v1/completions", "/v1/chat/completions"][route]
    if route:
        body = {"model": "m", "prompt": body.get("text"), "messages": body.get("input_ids"), **body}
    status, _, text = call("POST", worker.url + path, body)
    assert status in (200, 400), text
    json.loads(text.split("\n\n")[0].removeprefix("data: "))


def test_unknown_routes_and_methods(worker):
    assert call("GET", worker.url + "/nope")[::2] == (404, '{"detail":"Not Found"}')
    assert call("GET", worker.url + "/generate")[0] == 405
    assert call("DELETE", worker.url + "/flush_cache")[0] == 405


# ---- info, load, metrics ------------------------------------------------------------


def test_server_info_has_the_real_keys_and_says_it_is_emulated(worker):
    real = sample_json("server_info.json")
    for path in ("/server_info", "/get_server_info"):
        ours = get_json(worker.url + path)
        assert set(real) <= set(ours), set(real) - set(ours)
        assert set(real["internal_states"][0]) <= set(ours["internal_states"][0])
        assert ours["emulated"] is True
        assert ours["cost_model"] == "llama3-8b-h100-flashinfer" and ours["time_scale"] == FAST
        assert ours["version"] == "0.5.14" and ours["status"] == "ready"
        assert ours["max_total_num_tokens"] == 398568 and ours["chunked_prefill_size"] == 8192
        assert ours["internal_states"][0]["effective_max_running_requests_per_dp"] == 2048
        assert ours["port"] == worker.worker.port


def test_model_info_and_models(worker):
    real = sample_json("model_info.json")
    for path in ("/model_info", "/get_model_info"):
        assert list(get_json(worker.url + path)) == list(real)
    models = get_json(worker.url + "/v1/models")
    assert models["object"] == "list" and models["data"][0]["id"] == "meta-llama/Meta-Llama-3-8B"


def test_loads_have_sglang_fields(worker):
    readme_fields = [
        "dp_rank",
        "num_running_reqs",
        "num_waiting_reqs",
        "num_waiting_uncached_tokens",
        "num_used_tokens",
        "num_total_tokens",
        "max_total_num_tokens",
        "max_running_requests",
        "token_usage",
        "gen_throughput",
        "cache_hit_rate",
        "utilization",
        "memory",
        "disaggregation",
    ]
    loads = get_json(worker.url + "/v1/loads")
    assert {"timestamp", "version", "dp_rank_count", "loads", "aggregate"} <= set(loads)
    assert list(loads["loads"][0])[: len(readme_fields)] == readme_fields
    assert set(loads["loads"][0]["memory"]) == {"weight_gb", "kv_cache_gb", "graph_gb", "token_capacity"}
    # The sample's 51.696 GB for 423494 tokens, at the default cost model's 398568.
    assert loads["loads"][0]["memory"]["kv_cache_gb"] == round(51.696 * 398568 / 423494, 3)
    core = get_json(worker.url + "/v1/loads?include=core")["loads"][0]
    assert "memory" not in core and "num_running_reqs" in core
    assert call("GET", worker.url + "/v1/loads?include=bogus")[0] == 400
    assert get_json(worker.url + "/v1/loads?dp_rank=3")["loads"] == []
    text = call("GET", worker.url + "/v1/loads?format=prometheus")[2]
    assert 'sglang_num_running_reqs{dp_rank="0"} 0' in text
    (old,) = get_json(worker.url + "/get_load")
    assert {"dp_rank", "num_reqs", "num_waiting_reqs", "num_tokens"} <= set(old)


def _metric_labels(text):
    """metric name -> label keys of its first sample line."""
    out = {}
    for line in text.splitlines():
        m = re.match(r"^(sglang:[a-z0-9_]+?)(_sum|_count|_bucket)?(\{(.*)\})? ", line)
        if m and not line.startswith("#"):
            keys = frozenset(re.findall(r'([a-z_]+)="', m.group(4) or "")) - {"le"}
            out.setdefault(m.group(1), keys)
    return out


def test_metrics_use_sglang_names_and_labels(worker):
    post_json(worker.url + "/generate", {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 3}})
    status, headers, text = call("GET", worker.url + "/metrics")
    assert status == 200 and headers["Content-Type"].startswith("text/plain")
    ours, real = _metric_labels(text), _metric_labels((SAMPLES / "metrics.txt").read_text())
    required = {
        "sglang:num_running_reqs",
        "sglang:num_queue_reqs",
        "sglang:token_usage",
        "sglang:gen_throughput",
        "sglang:time_to_first_token_seconds",
        "sglang:inter_token_latency_seconds",
        "sglang:e2e_request_latency_seconds",
        "sglang:prompt_tokens_total",
        "sglang:generation_tokens_total",
    }
    assert required <= set(ours)
    assert set(ours) <= set(real), set(ours) - set(real)  # nothing SGLang does not have
    for name, keys in ours.items():
        if name not in ("sglang:http_requests_total", "sglang:http_responses_total"):
            assert keys == real[name], name
    ttft = re.search(r"sglang:time_to_first_token_seconds_count\{[^}]*\} (\S+)", text)
    assert float(ttft.group(1)) >= 1
    assert re.search(
        r'^sglang:time_to_first_token_seconds_bucket\{engine_type="unified",le="\+Inf"', text, re.M
    )


def test_health(worker):
    assert call("GET", worker.url + "/health")[0] == 200
    assert call("GET", worker.url + "/health_generate")[0] == 200


# ---- abort, disconnect, cache ------------------------------------------------------


def test_abort_request_ends_a_long_stream_with_finish_reason_abort(worker):
    assert call("POST", worker.url + "/abort_request", {"rid": "nobody"})[::2] == (200, "")
    body = {"input_ids": [5] * 10, "sampling_params": {"max_new_tokens": 100_000, "ignore_eos": True}}
    body.update(stream=True, rid="long-one")
    result = {}
    reader = threading.Thread(target=lambda: result.update(events=sse(worker.url + "/generate", body)))
    reader.start()
    poll(lambda: running(worker.url) >= 1)
    assert call("POST", worker.url + "/abort_request", {"rid": "long-one"})[::2] == (200, "")
    reader.join(10)
    events = result["events"]
    assert events[-1][1] == "[DONE]"
    last = json.loads(events[-2][1])
    assert last["meta_info"]["finish_reason"]["type"] == "abort"
    assert 0 < last["meta_info"]["completion_tokens"] < 100_000
    assert running(worker.url) == 0


def test_a_client_disconnect_aborts_its_request(worker):
    body = {
        "input_ids": [6] * 10,
        "sampling_params": {"max_new_tokens": 100_000, "ignore_eos": True},
        "stream": True,
    }
    parts = urllib.parse.urlsplit(worker.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    resp = conn.getresponse()
    assert resp.readline().startswith(b"data: ")
    conn.close()
    poll(lambda: running(worker.url) == 0)


def test_a_client_disconnect_aborts_a_non_streaming_request(worker):
    body = {"input_ids": [8] * 10, "sampling_params": {"max_new_tokens": 100_000, "ignore_eos": True}}
    parts = urllib.parse.urlsplit(worker.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=10)
    conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
    poll(lambda: running(worker.url) == 1)
    conn.close()
    poll(lambda: running(worker.url) == 0)


def test_prefix_cache_reports_cached_tokens_and_flushes(worker):
    body = {"input_ids": list(range(1, 1101)), "sampling_params": {"max_new_tokens": 1}}
    post_json(worker.url + "/generate", body)
    meta = post_json(worker.url + "/generate", body)["meta_info"]
    assert meta["cached_tokens"] == 1024 and meta["cached_tokens_details"] == {"device": 1024, "host": 0}
    status, _, text = call("POST", worker.url + "/flush_cache")
    assert status == 200 and text.startswith("Cache flushed.")
    assert post_json(worker.url + "/generate", body)["meta_info"]["cached_tokens"] == 0
    trace = {"input_ids": [3] * 600, "hash_ids": [77, 78], "sampling_params": {"max_new_tokens": 1}}
    post_json(worker.url + "/generate", trace)
    trace["input_ids"] = [4] * 600  # the trace's hash ids, not the ids, say what is shared
    assert post_json(worker.url + "/generate", trace)["meta_info"]["cached_tokens"] == 599


def test_resume_on_another_worker_continues_the_same_tokens(worker, other_worker):
    prompt = builtin.encode("A request migrated between workers keeps its stream.")
    params = {"max_new_tokens": 50, "ignore_eos": True}
    whole = post_json(worker.url + "/generate", {"input_ids": prompt, "sampling_params": params})[
        "output_ids"
    ]
    params = {"max_new_tokens": 30, "ignore_eos": True}
    rest = post_json(
        other_worker.url + "/generate", {"input_ids": prompt + whole[:20], "sampling_params": params}
    )["output_ids"]
    assert whole[:20] + rest == whole


# ---- the openai client -----------------------------------------------------------------


@pytest.fixture(scope="module")
def client(worker):
    return openai.OpenAI(base_url=worker.url + "/v1", api_key="unused", max_retries=0)


def test_openai_chat(client):
    messages = [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi!"}]
    r = client.chat.completions.create(model="m", messages=messages, max_tokens=7)
    assert r.object == "chat.completion" and r.model == "m"
    assert r.choices[0].finish_reason == "length" and r.choices[0].message.role == "assistant"
    assert r.usage.completion_tokens == 7
    assert r.usage.prompt_tokens == len(builtin.chat_prompt_ids([("system", "Be brief."), ("user", "Hi!")]))
    chunks = list(
        client.chat.completions.create(
            model="m", messages=messages, max_tokens=7, stream=True, stream_options={"include_usage": True}
        )
    )
    assert chunks[0].choices[0].delta.role == "assistant"
    text = "".join(c.choices[0].delta.content or "" for c in chunks if c.choices)
    assert text == r.choices[0].message.content  # same prompt, same tokens
    finish = [c.choices[0].finish_reason for c in chunks if c.choices and c.choices[0].finish_reason]
    assert finish == ["length"]
    assert chunks[-1].choices == [] and chunks[-1].usage.total_tokens == r.usage.total_tokens


def test_openai_completions(client):
    r = client.completions.create(model="m", prompt="Once upon a time", max_tokens=9)
    assert r.object == "text_completion" and r.choices[0].finish_reason == "length"
    assert r.usage.prompt_tokens == 1 + len(builtin.encode("Once upon a time"))
    assert r.usage.completion_tokens == 9
    chunks = list(client.completions.create(model="m", prompt="Once upon a time", max_tokens=9, stream=True))
    assert "".join(c.choices[0].text for c in chunks) == r.choices[0].text
    assert chunks[-1].choices[0].finish_reason == "length" and all(c.usage is None for c in chunks)
    stop = r.choices[0].text.split(" ")[3]
    cut = client.completions.create(model="m", prompt="Once upon a time", max_tokens=9, stop=[" " + stop])
    assert cut.choices[0].finish_reason == "stop"
    assert cut.choices[0].text == r.choices[0].text[: r.choices[0].text.index(" " + stop)]
    tokens = client.completions.create(model="m", prompt=[1, 2, 3], max_tokens=2)
    assert tokens.usage.prompt_tokens == 3


def test_openai_client_sees_bad_requests(client):
    with pytest.raises(openai.BadRequestError, match="max_tokens"):
        client.completions.create(model="m", prompt="x", max_tokens=-1)
    with pytest.raises(openai.BadRequestError, match="maximum context length"):
        client.chat.completions.create(
            model="m", messages=[{"role": "user", "content": "x"}], max_tokens=10**6
        )
