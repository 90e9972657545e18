"""Workers at run time: adding and removing re-partitions without dropping in-flight requests;
health checks eject a dead worker and take it back."""

import json
import threading
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

from router_http import Process, call, free_port, get_json, poll, post_json, workers

from l4_sglang.router import BackgroundRouter, RouterSettings


def _stage_workers(url):
    return sorted(w for s in get_json(url + "/l4/stages")["stages"] for w in s["workers"])


def test_adding_and_removing_workers_keeps_in_flight_requests(tmp_path):
    with workers(4, time_scale=0.1) as ws:
        first, extra = ws[:2], ws[2:]
        settings = RouterSettings(
            worker_urls=tuple(w.url for w in first),
            port=0,
            policy="l4",
            load_poll_interval=0.1,
            tick_interval=0.05,
            policy_overrides={"min_samples": 0, "refine_interval_s": 0.1},
        )
        body = {"sampling_params": {"max_new_tokens": 1500, "ignore_eos": True}}
        prompts = [list(range(10 + i, 200 + 37 * i)) for i in range(8)]
        with ThreadPoolExecutor(8) as pool:
            refs = list(
                pool.map(lambda p: post_json(extra[0].url + "/generate", {**body, "input_ids": p}), prompts)
            )
        with BackgroundRouter(settings) as router:
            assert _stage_workers(router.url) == sorted(w.url for w in first)
            results: dict[int, dict] = {}

            def one(i):
                results[i] = post_json(router.url + "/generate", {**body, "input_ids": prompts[i]})

            threads = [threading.Thread(target=one, args=(i,)) for i in range(8)]
            for t in threads:
                t.start()
            poll(lambda: sum(get_json(w.url + "/v1/loads")["aggregate"]["total_reqs"] for w in first) == 8)
            for w in extra:
                out = post_json(router.url + "/workers", {"url": w.url})
                assert out == {"url": w.url, "added": True, "healthy": True}
            assert post_json(router.url + "/workers", {"url": extra[0].url + "/"})["added"] is False
            assert _stage_workers(router.url) == sorted(w.url for w in ws)
            # Take away a worker that is serving some of them: they finish there (or move on).
            loads = {w.url: get_json(w.url + "/v1/loads")["aggregate"]["total_reqs"] for w in ws}
            busy = max(loads, key=loads.get)
            assert loads[busy] > 0
            assert call("DELETE", router.url + "/workers?url=" + busy)[0] == 200
            assert _stage_workers(router.url) == sorted(w.url for w in ws if w.url != busy)
            assert busy not in [w["url"] for w in get_json(router.url + "/workers")["workers"]]
            # New requests go to the remaining workers only.
            out = post_json(
                router.url + "/generate", {"text": "new", "sampling_params": {"max_new_tokens": 4}}
            )
            assert out["meta_info"]["l4_workers"][0] != busy
            for t in threads:
                t.join(60)
            assert sorted(results) == list(range(8))
            for i, out in results.items():
                assert out["output_ids"] == refs[i]["output_ids"]
                assert out["meta_info"]["finish_reason"] == {"type": "length", "length": 1500}
            assert call("DELETE", router.url + "/workers?url=" + busy)[0] == 404
            assert call("DELETE", router.url + "/workers?url=ftp://nope")[0] == 400
            assert call("POST", router.url + "/workers", {"url": 5})[0] == 400
            assert router.call(lambda: len(router.router.policy.book.requests)) == 0


def test_a_dead_worker_is_ejected_and_taken_back_when_healthy(tmp_path):
    port = free_port()
    args = ("-m", "l4_sglang.emulated_worker", "--port", str(port), "--time-scale", "0.05")
    proc = Process(*args, log_path=tmp_path / "a")
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _up(url), timeout=30, interval=0.1)
        with workers(1) as other:
            settings = RouterSettings(
                worker_urls=(url, other[0].url), port=0, policy="round_robin", load_poll_interval=0.1
            )
            with BackgroundRouter(settings) as router:

                def health():
                    return {w["url"]: w["healthy"] for w in get_json(router.url + "/workers")["workers"]}

                assert health() == {url: True, other[0].url: True}
                proc.stop()
                poll(lambda: health()[url] is False, timeout=10)
                for _ in range(4):  # all served, none sent to the dead worker
                    out = post_json(
                        router.url + "/generate", {"text": "x", "sampling_params": {"max_new_tokens": 2}}
                    )
                    assert out["meta_info"]["l4_workers"] == [other[0].url]
                proc = Process(*args, log_path=tmp_path / "b")
                poll(lambda: health()[url] is True, timeout=30, interval=0.1)
                seen = set()
                for _ in range(4):
                    out = post_json(
                        router.url + "/generate", {"text": "x", "sampling_params": {"max_new_tokens": 2}}
                    )
                    seen.update(out["meta_info"]["l4_workers"])
                assert seen == {url, other[0].url}
            # Every worker down: the router says so instead of hanging.
            with BackgroundRouter(
                RouterSettings(worker_urls=(f"http://127.0.0.1:{free_port()}",), port=0)
            ) as lone:
                status, _, text = call("POST", lone.url + "/generate", {"text": "x"})
                assert status == 503 and "No worker available" in text
                assert call("GET", lone.url + "/health")[0] == 503
    finally:
        proc.stop()


def _up(url):
    try:
        return call("GET", url + "/health", timeout=1)[0] == 200
    except OSError:
        return False


def test_load_falls_back_to_get_load_then_metrics():
    from router_http import FakeWorker

    samples = Path(__file__).resolve().parents[3] / "shared" / "gpu" / "samples" / "metrics.txt"
    metrics = samples.read_text() if samples.is_file() else 'sglang:num_used_tokens{tp_rank="0"} 5.0\n'
    base = {("GET", "/health"): (200, ""), ("GET", "/server_info"): (200, '{"context_length": 8192}')}
    # Real SGLang 0.5.14 with --enable-metrics answers /v1/loads with a 500.
    broken_loads = {("GET", "/v1/loads"): (500, "Internal Server Error")}
    get_load = [{"dp_rank": 0, "num_reqs": 3, "num_waiting_reqs": 1, "num_tokens": 900, "ts_tic": 1.0}]
    old = FakeWorker({**base, **broken_loads, ("GET", "/get_load"): (200, json.dumps(get_load))})
    scraped = FakeWorker({**base, **broken_loads, ("GET", "/metrics"): (200, metrics)})
    try:
        settings = RouterSettings(worker_urls=(old.url, scraped.url), port=0, load_poll_interval=0.1)
        with BackgroundRouter(settings) as router:
            found = {w["url"]: w for w in get_json(router.url + "/workers")["workers"]}
            assert found[old.url]["load_source"] == "/get_load"
            assert found[old.url]["load"]["running"] == 2 and found[old.url]["load"]["waiting"] == 1
            assert found[scraped.url]["load_source"] == "/metrics"
            assert found[scraped.url]["load"]["kv_tokens"] == 5
            assert all(w["healthy"] and w["info"]["context_length"] == 8192 for w in found.values())
            # A load source that starts answering again is picked up: the chain starts over.
            old.routes[("GET", "/v1/loads")] = (200, json.dumps({"loads": [
                {"num_running_reqs": 7, "num_waiting_reqs": 0, "num_used_tokens": 70}]}))  # fmt: skip
            old.routes[("GET", "/get_load")] = (500, "gone")
            poll(lambda: get_json(router.url + "/workers")["workers"][0]["load"]["running"] == 7)
    finally:
        old.stop()
        scraped.stop()
