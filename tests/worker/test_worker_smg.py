"""SGLang's own gateway (smg, a dev dependency) in front of two emulated workers:
it must take them for SGLang and pass requests, streaming chat included."""

import json
import subprocess
import sys
from contextlib import ExitStack

import openai
import pytest
from worker_http import call, free_port, get_json, poll, post_json, sse

from l4_sglang.worker.server import BackgroundWorker, WorkerSettings


@pytest.fixture(scope="module")
def gateway():
    with ExitStack() as stack:
        workers = [
            stack.enter_context(BackgroundWorker(WorkerSettings(port=0, time_scale=0.1))) for _ in range(2)
        ]
        port = free_port()
        urls = [w.url for w in workers]
        cmd = [sys.executable, "-m", "smg", "launch", "--worker-urls", *urls, "--port", str(port)]
        cmd += ["--policy", "round_robin", "--log-level", "warn", "--shutdown-grace-period-secs", "0"]
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
        url = f"http://127.0.0.1:{port}"
        try:

            def registered():
                if proc.poll() is not None:
                    raise AssertionError("smg exited")
                try:
                    workers = get_json(url + "/workers")["workers"]
                except (OSError, AssertionError):
                    return None
                # Healthy and load-polled: smg marks a worker healthy before its first load poll.
                healthy = [w for w in workers if w.get("is_healthy") and w.get("engine_load")]
                return healthy if len(healthy) == 2 else None

            yield url, poll(registered, timeout=30, interval=0.1)[0]
        finally:
            proc.terminate()
            proc.wait(10)


def test_smg_detects_an_sglang_worker(gateway):
    _, worker = gateway
    assert worker["runtime_type"] == "sglang"
    assert worker["labels"]["version"] == "0.5.14"
    assert worker["engine_load"]["loads"][0]["max_total_num_tokens"] == 398568  # the default cost model's


def test_requests_pass_through_smg(gateway):
    url, _ = gateway
    out = post_json(url + "/generate", {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4}})
    assert len(out["output_ids"]) == 4 and out["meta_info"]["finish_reason"]["type"] == "length"
    events = sse(url + "/generate", {"text": "hi", "sampling_params": {"max_new_tokens": 3}, "stream": True})
    assert events[-1][1] == "[DONE]" and len(json.loads(events[-2][1])["output_ids"]) == 3
    chat = {
        "model": "meta-llama/Meta-Llama-3-8B",
        "messages": [{"role": "user", "content": "hi"}],
        "max_tokens": 3,
    }
    reply = post_json(url + "/v1/chat/completions", chat)
    assert reply["usage"]["completion_tokens"] == 3
    assert call("POST", url + "/v1/chat/completions", {**chat, "max_tokens": 10**6})[0] == 400


def test_openai_client_streams_a_chat_completion_through_smg(gateway):
    url, _ = gateway
    client = openai.OpenAI(base_url=url + "/v1", api_key="unused", max_retries=0, timeout=30)
    stream = client.chat.completions.create(
        model="meta-llama/Meta-Llama-3-8B",
        messages=[{"role": "user", "content": "Say something short."}],
        max_tokens=8,
        stream=True,
    )
    pieces, finish = [], None
    for chunk in stream:
        if chunk.choices:
            pieces.append(chunk.choices[0].delta.content or "")
            finish = chunk.choices[0].finish_reason or finish
    assert "".join(pieces).strip(), pieces
    assert finish == "length"
