"""The cost model's request_overhead_s: host latency a request waits before the scheduler sees it."""

import asyncio
import json
import subprocess
import sys
import threading
import time

import pytest
from worker_http import WorkerProcess, call, get_json, post_json, sse

from l4_sglang import CostModel
from l4_sglang.worker import host_latency
from l4_sglang.worker.server import BackgroundWorker, WorkerSettings

OVERHEAD_S = 0.25


def model_with_overhead(tmp_path) -> str:
    params = CostModel.load("llama3-8b-h200-flashinfer").params | {"request_overhead_s": OVERHEAD_S}
    path = tmp_path / "with-overhead.json"
    path.write_text(json.dumps(params))
    return str(path)


def test_first_token_waits_for_the_request_overhead(tmp_path):
    model = CostModel.load(model_with_overhead(tmp_path))
    with BackgroundWorker(WorkerSettings(port=0, cost_model=model_with_overhead(tmp_path))) as worker:
        body = {"input_ids": list(range(1, 9)), "sampling_params": {"max_new_tokens": 1}}
        sent = time.perf_counter()
        out = post_json(worker.url + "/generate", body)
        elapsed = time.perf_counter() - sent
    floor = OVERHEAD_S + model.prefill_time(8)
    assert out["meta_info"]["completion_tokens"] == 1
    assert elapsed >= floor * 0.98, (elapsed, floor)
    assert elapsed < floor + 0.2


def test_abort_during_the_overhead_ends_the_request(tmp_path):
    with BackgroundWorker(WorkerSettings(port=0, cost_model=model_with_overhead(tmp_path))) as worker:
        body = {"input_ids": [5, 6, 7], "sampling_params": {"max_new_tokens": 50}}
        body |= {"stream": True, "rid": "early"}
        events: list = []
        streamer = threading.Thread(target=lambda: events.extend(sse(worker.url + "/generate", body)))
        streamer.start()
        time.sleep(OVERHEAD_S / 5)  # still inside the overhead: nothing scheduled yet
        assert call("POST", worker.url + "/abort_request", {"rid": "early"})[0] == 200
        streamer.join(10)
    assert not streamer.is_alive()
    finals = [json.loads(d) for _, d in events if d != "[DONE]"]
    assert finals and finals[-1]["meta_info"]["finish_reason"]["type"] == "abort"
    assert finals[-1]["meta_info"]["completion_tokens"] == 0


def test_the_measured_host_latency_comes_out_of_the_delay(tmp_path):
    settings = WorkerSettings(port=0, cost_model=model_with_overhead(tmp_path), host_latency_s=0.004)
    with BackgroundWorker(settings) as worker:
        info = get_json(worker.url + "/server_info")
    assert info["request_overhead_s"] == OVERHEAD_S and info["host_latency_s"] == 0.004
    assert abs(info["request_delay_s"] - (OVERHEAD_S - 0.004)) < 1e-12


def test_a_host_slower_than_the_overhead_waits_nothing(tmp_path):
    settings = WorkerSettings(port=0, cost_model=model_with_overhead(tmp_path), host_latency_s=1.0)
    with BackgroundWorker(settings) as worker:
        assert get_json(worker.url + "/server_info")["request_delay_s"] == 0.0


def test_the_probe_measures_a_plausible_round_trip(tmp_path):
    # Loopback aiohttp on any machine: more than nothing, far less than the 250 ms modelled overhead.
    latency = asyncio.run(host_latency.measure(WorkerSettings(cost_model=model_with_overhead(tmp_path))))
    assert 0 < latency < 0.05


def test_the_cli_measures_by_default_and_takes_a_fixed_value(tmp_path):
    model = model_with_overhead(tmp_path)
    auto = WorkerProcess("--cost-model", model).wait_ready()
    fixed = WorkerProcess("--cost-model", model, "--host-latency", "0").wait_ready()
    try:
        measured = get_json(auto.url + "/server_info")
        off = get_json(fixed.url + "/server_info")
    finally:
        auto.stop()
        fixed.stop()
    assert 0 < measured["host_latency_s"] < 0.05
    assert measured["request_delay_s"] < OVERHEAD_S
    assert off["host_latency_s"] == 0 and off["request_delay_s"] == OVERHEAD_S


@pytest.mark.parametrize("value", ["soon", "-0.001", "nan"])
def test_a_bad_host_latency_is_refused(value):
    done = subprocess.run(
        [sys.executable, "-m", "l4_sglang.emulated_worker", "--host-latency", value],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert done.returncode == 2 and "--host-latency" in done.stderr
