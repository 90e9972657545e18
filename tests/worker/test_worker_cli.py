"""`python -m l4_sglang.emulated_worker` as a real subprocess: timing, queueing, sample fidelity."""

import itertools
import json
import os
import statistics
import subprocess
import sys
import threading

import pytest
from worker_http import SAMPLES, WorkerProcess, call, get_json, poll, post_json, sse

from l4_sglang import CostModel


@pytest.fixture(scope="module")
def model() -> CostModel:
    return CostModel.load()  # the default the worker runs


@pytest.fixture(scope="module")
def realtime():
    """Real time (scale 1), no tokenizer: answers exactly as the samples' server did."""
    w = WorkerProcess("--time-scale", "1", "--skip-tokenizer-init").wait_ready()
    yield w
    w.stop()


def test_it_says_it_is_emulated(realtime):
    info = get_json(realtime.url + "/server_info")
    assert info["emulated"] is True and info["time_scale"] == 1.0
    assert info["skip_tokenizer_init"] is True and info["port"] == realtime.port
    assert call("GET", realtime.url + "/health")[1]["x-l4-emulated"] == "1"


def test_without_tokenizer_the_keys_are_exactly_the_samples(realtime):
    sample = json.loads((SAMPLES / "generate.json").read_text())
    out = post_json(
        realtime.url + "/generate", {"input_ids": [1, 2, 3, 4], "sampling_params": {"max_new_tokens": 4}}
    )
    assert list(out) == list(sample) and list(out["meta_info"]) == list(sample["meta_info"])
    body = {
        "input_ids": [1, 2, 3, 4],
        "sampling_params": {"max_new_tokens": 4},
        "stream": True,
        "rid": "abc123",
    }
    ours = [e for _, e in sse(realtime.url + "/generate", body)]
    real = [line[6:] for line in (SAMPLES / "generate_stream.txt").read_text().splitlines() if line]
    assert len(ours) == len(real) and ours[-1] == real[-1] == "[DONE]"
    for a, b in zip(ours[:-1], real[:-1], strict=True):
        a, b = json.loads(a), json.loads(b)
        assert list(a) == list(b) and list(a["meta_info"]) == list(b["meta_info"])


def test_step_times_follow_the_cost_model_at_time_scale_1(realtime, model):
    prompt, new = 300, 120
    body = {
        "input_ids": [9] * prompt,
        "stream": True,
        "sampling_params": {"max_new_tokens": new, "ignore_eos": True},
    }
    events = sse(realtime.url + "/generate", body)
    arrivals = [t for t, _ in events[:-1]]
    assert len(arrivals) == new
    # Decode k reads prompt + k tokens of KV; its chunk arrives one step after the previous one.
    predicted = [model.step_time([(1, prompt + k)]) for k in range(new - 1)]
    measured_span = arrivals[-1] - arrivals[0]
    assert measured_span == pytest.approx(sum(predicted), rel=0.05)
    gaps = [b - a for a, b in itertools.pairwise(arrivals)]
    assert statistics.median(gaps) == pytest.approx(statistics.median(predicted), rel=0.05)

    log = get_json(realtime.url + f"/emulated/steps?last={new}")
    steps = log["steps"]
    assert [s["kind"] for s in steps] == ["prefill"] + ["decode"] * (new - 1)
    assert steps[0]["cost_s"] == pytest.approx(model.step_time([(prompt, 0)]))
    for k, s in enumerate(steps[1:]):
        assert s["cost_s"] == pytest.approx(predicted[k])
        assert s["deadline"] - s["start"] == pytest.approx(s["cost_s"])
    # Wall time from the first step's start to the last one's end, against the model.
    wall = steps[-1]["applied"] - steps[0]["start"]
    assert wall == pytest.approx(sum(s["cost_s"] for s in steps), rel=0.05)


def test_concurrent_requests_queue_when_kv_is_full_and_all_finish():
    w = WorkerProcess("--time-scale", "0.2", "--max-total-tokens", "700").wait_ready()
    try:
        n, prompt, new = 8, 200, 100
        results = {}

        def one(i):
            body = {
                "input_ids": [i + 1] * prompt,
                "sampling_params": {"max_new_tokens": new, "ignore_eos": True},
            }
            results[i] = post_json(w.url + "/generate", body)

        threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
        for t in threads:
            t.start()
        seen = poll(lambda: get_json(w.url + "/v1/loads")["loads"][0]["num_waiting_reqs"], timeout=20)
        assert seen > 0
        for t in threads:
            t.join(60)
        assert sorted(results) == list(range(n))
        for out in results.values():
            assert out["meta_info"]["finish_reason"] == {"type": "length", "length": new}
            assert len(out["output_ids"]) == new
        load = get_json(w.url + "/v1/loads")["loads"][0]
        assert load["num_running_reqs"] == load["num_waiting_reqs"] == load["num_used_tokens"] == 0
        queued = [out["meta_info"]["queue_time"] for out in results.values()]
        assert max(queued) > 0.05  # later requests waited for KV
        status, _, text = call("POST", w.url + "/generate", {"input_ids": [1] * 700})
        assert status == 400 and "does not fit in the KV cache" in text
    finally:
        w.stop()


@pytest.mark.parametrize(
    ("args", "needle"),
    [(["--time-scale", "0"], "--time-scale"), (["--cost-model", "no-such-model"], "unknown name")],
)
def test_bad_arguments_exit_with_a_message(args, needle):
    run = subprocess.run(
        [sys.executable, "-m", "l4_sglang.emulated_worker", "--port", "1", *args],
        capture_output=True,
        text=True,
        timeout=30,
        env={**os.environ, "PATH": ""},
    )
    assert run.returncode == 2
    assert needle in run.stderr
