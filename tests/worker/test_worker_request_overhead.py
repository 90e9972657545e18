"""The cost model's request_overhead_s: host latency a request waits before the scheduler sees it."""

import json
import threading
import time

from worker_http import call, post_json, sse

from l4_sglang import CostModel
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
