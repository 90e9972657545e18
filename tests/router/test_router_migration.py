"""Migration and failover: a moved request's stitched output equals the same request unmoved.

The emulated worker's tokens are a function of (seed, three previous ids,
position), so a leg resumed elsewhere with prompt + generated ids goes on with
exactly the tokens the first worker would have produced. A scripted policy
proposes the moves, so where and how often they happen is under the test's control.
"""

import asyncio
import http.client
import itertools
import json
import signal
import threading
import time
import urllib.parse

import aiohttp
import openai
import pytest
from router_http import (
    MODEL,
    Process,
    Scripted,
    call,
    free_port,
    get_json,
    metric,
    poll,
    post_json,
    sse,
    workers,
)

from l4_sglang.router import BackgroundRouter, RouterSettings, http1
from l4_sglang.router.forwarding import Forwarder
from l4_sglang.router.generation import Generation, GenerationSpec
from l4_sglang.router.metrics import RouterMetrics
from l4_sglang.text.tokens import BuiltinTokenizer


@pytest.fixture(scope="module")
def three():
    with workers(3) as ws:
        yield ws


def _router(ws, policy, **kw):
    settings = RouterSettings(worker_urls=tuple(w.url for w in ws), port=0, load_poll_interval=0.1, **kw)
    return BackgroundRouter(settings, policy=policy)


def _same(routed: dict, direct: dict) -> None:
    assert routed["output_ids"] == direct["output_ids"]
    assert routed["text"] == direct["text"]
    a, b = routed["meta_info"], direct["meta_info"]
    assert (a["finish_reason"], a["prompt_tokens"], a["completion_tokens"]) == (
        b["finish_reason"],
        b["prompt_tokens"],
        b["completion_tokens"],
    )


def test_moved_generate_equals_unmoved_stream_and_not(three):
    body = {
        "input_ids": list(range(500, 800)),
        "sampling_params": {"max_new_tokens": 150, "ignore_eos": True},
    }
    direct = post_json(three[0].url + "/generate", body)
    policy = Scripted(every=25, moves=4)
    with _router(three, policy) as router:
        routed = post_json(router.url + "/generate", body)
        _same(routed, direct)
        assert routed["meta_info"]["l4_migrations"] == ["scripted"] * 4
        assert len(routed["meta_info"]["l4_workers"]) == 5
        events = sse(router.url + "/generate", {**body, "stream": True})
        chunks = [json.loads(e) for e in events[:-1]]
        _same(chunks[-1], direct)
        for a, b in itertools.pairwise(chunks):  # no id is repeated or lost on the way
            assert b["output_ids"][: len(a["output_ids"])] == a["output_ids"]
        text = call("GET", router.url + "/metrics")[2]
        assert metric(text, "l4_router_migrations_total", reason="scripted") == 8
    assert len(policy.confirmed) == 8 and len(policy.finished) == 2 and not policy.aborted
    assert all(m.source != m.target for m in policy.confirmed)
    assert not policy.book.requests  # every booking released


def test_moved_openai_streams_equal_unmoved(three):
    direct = openai.OpenAI(base_url=three[1].url + "/v1", api_key="x", max_retries=0, timeout=60)
    messages = [{"role": "user", "content": "Write a long poem about the sea. " * 20}]
    ref = direct.chat.completions.create(model=MODEL, messages=messages, max_tokens=120)
    ref_c = direct.completions.create(model=MODEL, prompt="The sea " * 50, max_tokens=90)
    with _router(three, Scripted(every=30, moves=3)) as router:
        via = openai.OpenAI(base_url=router.url + "/v1", api_key="x", max_retries=0, timeout=60)
        stream = via.chat.completions.create(
            model=MODEL,
            messages=messages,
            max_tokens=120,
            stream=True,
            stream_options={"include_usage": True},
        )
        pieces, finish, usage = [], None, None
        for chunk in stream:
            if chunk.choices:
                pieces.append(chunk.choices[0].delta.content or "")
                finish = chunk.choices[0].finish_reason or finish
            usage = chunk.usage or usage
        assert "".join(pieces) == ref.choices[0].message.content
        assert finish == "length"
        assert (usage.prompt_tokens, usage.completion_tokens) == (ref.usage.prompt_tokens, 120)
        whole = via.chat.completions.create(model=MODEL, messages=messages, max_tokens=120)
        assert whole.choices[0].message.content == ref.choices[0].message.content
        assert whole.usage == ref.usage
        comp = via.completions.create(model=MODEL, prompt="The sea " * 50, max_tokens=90)
        assert comp.choices[0].text == ref_c.choices[0].text and comp.usage == ref_c.usage
        text = call("GET", router.url + "/metrics")[2]
        assert (
            metric(text, "l4_router_migrations_total", reason="scripted") == 3 + 3 + 2
        )  # not at the 90th, the last


def test_a_stop_string_across_a_move_stops_as_unmoved(three):
    prompt = {"text": "Tell me everything.", "sampling_params": {"max_new_tokens": 60, "ignore_eos": True}}
    ref = post_json(three[0].url + "/generate", prompt)
    # A stop string straddling tokens 30 and 31, first seen there.
    ids = ref["output_ids"]
    from l4_sglang.text import builtin

    head = builtin.decode(ids[:31])
    stop = head[-2:] + builtin.decode(ids[31:32])[:3]
    assert stop not in builtin.decode(ids[:30]) + builtin.decode(ids[30:31])[:-2]
    body = {**prompt, "sampling_params": {**prompt["sampling_params"], "stop": stop}}
    direct = post_json(three[0].url + "/generate", body)
    assert direct["meta_info"]["finish_reason"] == {"type": "stop", "matched": stop}
    with _router(three, Scripted(every=1, moves=60)) as router:  # a move after every chunk
        routed = post_json(router.url + "/generate", body)
        _same(routed, direct)
        assert len(routed["meta_info"]["l4_migrations"]) >= 5


def test_a_refused_target_leaves_the_request_on_its_source():
    # The second worker's context is too short for the resumed request: it answers 400.
    with workers(1) as big, workers(1, context_length=250) as small:
        body = {
            "input_ids": list(range(1, 201)),
            "sampling_params": {"max_new_tokens": 90, "ignore_eos": True},
        }
        direct = post_json(big[0].url + "/generate", body)
        policy = Scripted(every=20, moves=1, home=big[0].url)
        with _router(big + small, policy) as router:
            _same(post_json(router.url + "/generate", body), direct)
            text = call("GET", router.url + "/metrics")[2]
            assert metric(text, "l4_router_migrations_failed_total", reason="scripted") == 1
            assert metric(text, "l4_router_migrations_total") == 0
        assert policy.confirmed == []


def test_failover_when_a_worker_shuts_down_mid_stream():
    with workers(2, time_scale=0.2) as ws:
        body = {
            "input_ids": list(range(7, 300)),
            "sampling_params": {"max_new_tokens": 400, "ignore_eos": True},
        }
        direct = post_json(ws[1].url + "/generate", body)
        policy = Scripted(home=ws[0].url)
        with _router(ws, policy) as router:
            result = {}
            t = threading.Thread(target=lambda: result.update(out=post_json(router.url + "/generate", body)))
            t.start()
            poll(lambda: get_json(ws[0].url + "/v1/loads")["aggregate"]["total_running_reqs"] == 1)
            ws[0].stop()  # aborts its requests ("the server is shutting down")
            t.join(60)
            _same(result["out"], direct)
            assert result["out"]["meta_info"]["l4_migrations"] == ["failover"]
            assert result["out"]["meta_info"]["l4_workers"] == [ws[0].url, ws[1].url]
            # The dead worker is ejected, and new requests go elsewhere.
            poll(
                lambda: [w["healthy"] for w in get_json(router.url + "/workers")["workers"]] == [False, True]
            )
            out = post_json(
                router.url + "/generate", {"text": "still here", "sampling_params": {"max_new_tokens": 3}}
            )
            assert out["meta_info"]["l4_workers"] == [ws[1].url]
        # The resumed request was routed again (maybe twice: first to its worker, not ejected yet
        # as it shut down) through `reroute`: it arrived once.
        assert len(policy.routed) == 2 and set(policy.rerouted) == {policy.routed[0]}


def test_failover_when_a_worker_process_is_killed(tmp_path):
    port = free_port()
    proc = Process(
        "-m", "l4_sglang.emulated_worker", "--port", str(port), "--time-scale", "0.2", log_path=tmp_path / "w"
    )
    url = f"http://127.0.0.1:{port}"
    try:
        poll(lambda: _up(url), timeout=30, interval=0.1)
        with workers(1, time_scale=0.2) as other:
            body = {
                "input_ids": list(range(9, 250)),
                "sampling_params": {"max_new_tokens": 300, "ignore_eos": True},
            }
            direct = post_json(other[0].url + "/generate", body)
            settings = RouterSettings(worker_urls=(url, other[0].url), port=0, load_poll_interval=0.1)
            with BackgroundRouter(settings, policy=Scripted(home=url)) as router:
                events: list[str] = []
                parts = urllib.parse.urlsplit(router.url)
                conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
                conn.request("POST", "/generate", json.dumps({**body, "stream": True}))
                resp = conn.getresponse()
                while len(events) < 20:
                    line = resp.readline()
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip().decode())
                proc.stop(signal.SIGKILL)
                while True:
                    line = resp.readline()
                    if not line:
                        break
                    if line.startswith(b"data: "):
                        events.append(line[6:].strip().decode())
                conn.close()
                assert events[-1] == "[DONE]"
                last = json.loads(events[-2])
                _same(last, direct)
                assert last["meta_info"]["l4_migrations"] == ["failover"]
                text = call("GET", router.url + "/metrics")[2]
                assert metric(text, "l4_router_migrations_total", reason="failover") == 1
    finally:
        proc.stop()


def _up(url):
    try:
        return call("GET", url + "/health", timeout=1)[0] == 200
    except OSError:
        return False


def test_a_request_cancelled_just_as_its_worker_answers_leaves_nothing_running(three, monkeypatch):
    """The client leaves in the instant between the worker's answer and the router reading it:
    the answer must still be closed, or its worker generates on for nobody (a CI flake once)."""
    home = three[1].url
    waiting: list[asyncio.Task] = []

    class CancelOnAnswer(http1._Conn):
        """A connection that cancels the task waiting for its answer once the head is in, before it wakes."""

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if waiting and self.waiter is not None and self.waiter.done():
                waiting.pop().cancel()

    monkeypatch.setattr(http1, "_Conn", CancelOnAnswer)

    async def scenario() -> int:
        policy = Scripted(home=home)
        policy.add_worker(home, 0.0)
        fwd = Forwarder(policy, None, BuiltinTokenizer(), RouterMetrics(), lambda: None, time.monotonic)
        spec = GenerationSpec(prompt_ids=[1, 2, 3], max_new_tokens=100000, sampling={"ignore_eos": True})
        gen = fwd.new(spec, 0.0)
        task = asyncio.create_task(fwd.complete(gen))
        waiting.append(task)
        with pytest.raises(asyncio.CancelledError):
            await task
        assert not waiting  # it was cancelled as the answer came, not before
        fwd.end(gen)  # (no leg was made: it sends no abort)
        async with aiohttp.ClientSession() as probe:
            deadline = time.monotonic() + 10
            while time.monotonic() < deadline:  # while `fwd` still holds its connections open
                loads = await (await probe.get(home + "/v1/loads")).json()
                if loads["aggregate"]["total_reqs"] == 0:
                    break
                await asyncio.sleep(0.02)
        await fwd.close()
        return loads["aggregate"]["total_reqs"]

    assert asyncio.run(scenario()) == 0


def test_a_worker_ejected_just_as_it_answers_a_new_leg_is_left_for_another(three, monkeypatch):
    """The pool ejects the worker in the instant between its answer's head and the router reading
    it: the leg is given up (its connection closed) and the request goes on elsewhere, not hanging
    on a stream that was cut."""
    home, other = three[1].url, three[2].url
    eject: list[Forwarder] = []

    class EjectOnAnswer(http1._Conn):
        def data_received(self, data: bytes) -> None:
            # The head's waiter, held before the call: on a loaded machine the whole short stream
            # may come in this one read, and the connection is then idle again (waiter None).
            waiter = self.waiter
            super().data_received(data)
            if eject and self.base_url == home and waiter is not None and waiter.done():
                fwd = eject.pop()
                fwd.driver.worker_removed(home, 0.0)
                fwd.fail_worker(home)

    class Pool:
        def __init__(self) -> None:
            self.failed: list[tuple[str, str]] = []

        def report_failure(self, url: str, why: str) -> None:
            self.failed.append((url, why))

    monkeypatch.setattr(http1, "_Conn", EjectOnAnswer)

    async def scenario() -> tuple[Generation, Pool, int]:
        policy = Scripted(home=home)
        policy.add_worker(home, 0.0)
        policy.add_worker(other, 0.0)
        pool = Pool()
        fwd = Forwarder(policy, pool, BuiltinTokenizer(), RouterMetrics(), lambda: None, time.monotonic)
        eject.append(fwd)
        spec = GenerationSpec(prompt_ids=[1, 2, 3], max_new_tokens=5, sampling={"ignore_eos": True})
        gen = fwd.new(spec, 0.0)
        await asyncio.wait_for(fwd.complete(gen), 10)
        fwd.end(gen)
        async with aiohttp.ClientSession() as probe:
            loads = await (await probe.get(home + "/v1/loads")).json()
            deadline = time.monotonic() + 10
            while loads["aggregate"]["total_reqs"] and time.monotonic() < deadline:
                await asyncio.sleep(0.02)
                loads = await (await probe.get(home + "/v1/loads")).json()
        await fwd.close()
        return gen, pool, loads["aggregate"]["total_reqs"]

    gen, pool, left_on_home = asyncio.run(scenario())
    assert not eject  # the ejection came as the answer did
    assert gen.workers == [other] and len(gen.output_ids) == 5 and gen.finish_reason["type"] == "length"
    assert pool.failed == [(home, f"worker {home} was ejected before it answered")]
    assert left_on_home == 0  # the cut leg's connection was closed: its worker stopped


def test_a_client_that_goes_away_aborts_its_request_on_the_worker(three):
    policy = Scripted(home=three[2].url)
    with _router(three, policy) as router:
        parts = urllib.parse.urlsplit(router.url)
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        body = {
            "text": "forever",
            "stream": True,
            "sampling_params": {"max_new_tokens": 100000, "ignore_eos": True},
        }
        conn.request("POST", "/generate", json.dumps(body))
        resp = conn.getresponse()
        for _ in range(5):
            resp.readline()
        assert get_json(three[2].url + "/v1/loads")["aggregate"]["total_reqs"] == 1
        conn.close()
        poll(lambda: get_json(three[2].url + "/v1/loads")["aggregate"]["total_reqs"] == 0, timeout=10)
        poll(lambda: len(policy.aborted) == 1)
        assert not policy.book.requests
        # Non-streaming too: the handler is cancelled when the client leaves.
        conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
        conn.request("POST", "/generate", json.dumps({**body, "stream": False}))
        poll(lambda: get_json(three[2].url + "/v1/loads")["aggregate"]["total_reqs"] == 1)
        conn.close()
        poll(lambda: get_json(three[2].url + "/v1/loads")["aggregate"]["total_reqs"] == 0, timeout=10)
        poll(lambda: len(policy.aborted) == 2)
