"""Worker faults under load: a worker killed (SIGKILL) or hung (SIGSTOP) while it serves streams.
Every affected request resumes elsewhere with prompt + the ids generated so far and completes
with the tokens and usage of an undisturbed run; clients see no error; the worker is ejected (and
leaves L4's stages) and is taken back once its health checks pass again."""

import asyncio
import json
import signal
from concurrent.futures import ThreadPoolExecutor

import aiohttp
import openai
from fleet_procs import WorkerProc, worker_procs
from router_http import MODEL, FakeWorker, Scripted, call, get_json, metric, poll, post_json

from l4_sglang.router import BackgroundRouter, RouterSettings

NATIVE = 30
CHATS = 30
NEW_TOKENS = 400


def _prompt(i: int) -> list[int]:
    return list(range(50 + 3 * i, 120 + 40 * i))


def _messages(i: int) -> list[dict]:
    return [{"role": "user", "content": f"request {i}: " + "tell me more " * (i % 7)}]


async def _native(session, url, i):
    body = {"input_ids": _prompt(i), "stream": True}
    body["sampling_params"] = {"max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    async with session.post(url + "/generate", json=body) as resp:
        assert resp.status == 200, await resp.text()
        events = [line[6:].strip() async for line in resp.content if line.startswith(b"data: ")]
    assert events[-1] == b"[DONE]", events[-2:]
    return json.loads(events[-2])


async def _chat(client, i):
    stream = await client.chat.completions.create(
        model=MODEL,
        messages=_messages(i),
        max_tokens=NEW_TOKENS,
        stream=True,
        stream_options={"include_usage": True},
        extra_body={"ignore_eos": True},
    )
    text, usage, reason = "", None, None
    async for chunk in stream:
        if chunk.choices:
            text += chunk.choices[0].delta.content or ""
            reason = chunk.choices[0].finish_reason or reason
        if chunk.usage is not None:
            usage = chunk.usage
    return text, usage, reason


async def _clients(url, on_running):
    """NATIVE /generate streams and CHATS openai chat streams; `on_running()` runs in a thread
    meanwhile (it breaks a worker). Returns ([native results], [chat results])."""
    client = openai.AsyncOpenAI(base_url=url + "/v1", api_key="none", max_retries=0, timeout=120)
    connector = aiohttp.TCPConnector(limit=0)
    async with client, aiohttp.ClientSession(connector=connector) as session:
        native = [asyncio.ensure_future(_native(session, url, i)) for i in range(NATIVE)]
        chats = [asyncio.ensure_future(_chat(client, i)) for i in range(CHATS)]
        await asyncio.to_thread(on_running)
        return await asyncio.gather(*native), await asyncio.gather(*chats)


def _expected(url: str):
    """What an undisturbed worker answers, request by request."""
    sp = {"max_new_tokens": NEW_TOKENS, "ignore_eos": True}
    with ThreadPoolExecutor(NATIVE + CHATS) as pool:
        native = pool.map(
            lambda i: post_json(url + "/generate", {"input_ids": _prompt(i), "sampling_params": sp}),
            range(NATIVE),
        )
        chats = pool.map(
            lambda i: post_json(
                url + "/v1/chat/completions",
                {"model": MODEL, "messages": _messages(i), "max_tokens": NEW_TOKENS, "ignore_eos": True},
            ),
            range(CHATS),
        )
        return list(native), list(chats)


def _check(results, expected) -> int:
    """Assert every result equals the undisturbed one; returns how many failed over."""
    (native, chats), (want_native, want_chats) = results, expected
    moved = 0
    for got, want in zip(native, want_native, strict=True):
        assert got["output_ids"] == want["output_ids"]
        assert got["meta_info"]["prompt_tokens"] == want["meta_info"]["prompt_tokens"]
        assert got["meta_info"]["completion_tokens"] == NEW_TOKENS
        assert got["meta_info"]["finish_reason"] == {"type": "length", "length": NEW_TOKENS}
        moved += "failover" in got["meta_info"]["l4_migrations"]
    for (text, usage, reason), want in zip(chats, want_chats, strict=True):
        assert text == want["choices"][0]["message"]["content"]
        assert reason == "length"
        assert usage.prompt_tokens == want["usage"]["prompt_tokens"]
        assert usage.completion_tokens == NEW_TOKENS
    return moved


def _running(url: str) -> int:
    return get_json(url + "/v1/loads")["aggregate"]["total_running_reqs"]


def _healthy(router_url: str) -> dict[str, bool]:
    return {w["url"]: w["healthy"] for w in get_json(router_url + "/workers")["workers"]}


def _staged(router_url: str) -> set[str]:
    return {w for s in get_json(router_url + "/l4/stages")["stages"] for w in s["workers"]}


def test_a_worker_killed_under_load_loses_no_request_and_comes_back(tmp_path):
    with worker_procs(tmp_path, 3, 0.1) as ws:
        expected = _expected(ws[2].url)
        settings = RouterSettings(
            worker_urls=tuple(w.url for w in ws),
            port=0,
            policy="l4",
            load_poll_interval=0.1,
            tick_interval=0.05,
            # No proposed migrations: in-stage pairing drains the busiest worker, the one the test
            # kills, and could empty it of streams just before the kill. Failover is the driver's.
            policy_overrides={"min_samples": 0, "refine_interval_s": 0.2, "migration": False},
        )
        with BackgroundRouter(settings) as router:
            assert _staged(router.url) == {w.url for w in ws}
            seen = {}

            def kill_mid_stream():
                # Once the requests are decoding, kill the busiest worker as soon as it runs 5 (a
                # fleet-wide count would wait in vain on a busy 2-core machine, where the clients
                # send slowly enough that early streams end before the last start).
                def busiest():
                    running = {w.url: _running(w.url) for w in ws}
                    top = max(ws, key=lambda w: running[w.url])
                    return top if running[top.url] >= 5 else None

                seen["victim"] = victim = poll(busiest, timeout=60)
                seen["running"] = _running(victim.url)
                victim.stop(signal.SIGKILL)

            results = asyncio.run(_clients(router.url, kill_mid_stream))
            victim: WorkerProc = seen["victim"]
            others = {w.url for w in ws if w is not victim}
            moved = _check(results, expected)
            failovers = metric(
                call("GET", router.url + "/metrics")[2], "l4_router_migrations_total", reason="failover"
            )
            # Requests running there at the kill resumed elsewhere (L4 may have moved some of them
            # just before, so their count bounds the failovers only loosely).
            assert failovers >= max(moved, 1)
            # The dead worker is ejected and out of the stage layout; the others hold every stage.
            assert _healthy(router.url)[victim.url] is False
            assert _staged(router.url) == others
            assert moved >= 1 and seen["running"] >= 5
            # Started again on its port, it passes its health checks and is taken back.
            victim.start()
            poll(lambda: _healthy(router.url)[victim.url], timeout=60, interval=0.1)
            poll(lambda: _staged(router.url) == {w.url for w in ws}, timeout=10)
            results = asyncio.run(_clients(router.url, lambda: None))
            assert _check(results, expected) == 0
            print(
                f"\nSIGKILL with {seen['running']} requests running on the worker: "
                f"{NATIVE + CHATS} in, {NATIVE + CHATS} correct out, {failovers:.0f} resumed elsewhere"
            )


def test_a_hung_worker_is_ejected_by_health_checks_and_its_streams_resume(tmp_path):
    with worker_procs(tmp_path, 2, 0.1) as ws:
        expected = _expected(ws[1].url)
        settings = RouterSettings(
            worker_urls=tuple(w.url for w in ws),
            port=0,
            policy="round_robin",
            load_poll_interval=0.1,
            # Long enough that the other worker, taking the hung one's streams on a loaded 2-core
            # machine, still answers its checks (at 0.5 s both were ejected now and then).
            health_timeout=2.0,
        )
        with BackgroundRouter(settings) as router:
            hung = ws[0]

            def freeze():
                poll(lambda: _running(hung.url) >= 5, timeout=60)
                hung.proc.proc.send_signal(signal.SIGSTOP)  # the connection stays open, silent

            try:
                results = asyncio.run(_clients(router.url, freeze))
                assert _healthy(router.url)[hung.url] is False
            finally:
                hung.proc.proc.send_signal(signal.SIGCONT)
            moved = _check(results, expected)
            assert moved >= 1
            poll(lambda: _healthy(router.url)[hung.url], timeout=30, interval=0.1)
            # The requests it held when it froze were aborted there once it woke up.
            poll(lambda: _running(hung.url) == 0, timeout=30)


def test_the_circuit_breaker_counts_checks_and_keeps_the_policy_to_healthy_workers():
    health = {("GET", "/health"): (200, "")}
    fake = FakeWorker(health)
    try:
        settings = RouterSettings(
            worker_urls=(fake.url,),
            port=0,
            load_poll_interval=3600,
            failure_threshold=2,
            recovery_threshold=2,
        )
        policy = Scripted()
        with BackgroundRouter(settings, policy=policy) as router:
            pool = router.router.pool

            def check(status: int) -> tuple[bool, list[str]]:
                fake.routes[("GET", "/health")] = (status, "")
                router.call(pool.poll)
                return pool.workers[fake.url].healthy, router.call(lambda: list(policy.book.workers))

            assert check(500) == (True, [fake.url])  # one failure is not enough
            assert check(500) == (False, [])  # two eject it: the policy forgets it
            assert check(200) == (False, [])  # one pass is not enough
            assert check(500) == (False, [])  # and a failure starts the count again
            assert check(200) == (False, [])
            assert check(200) == (True, [fake.url])  # two in a row take it back
            router.call(lambda: pool.report_failure(fake.url, "connection reset"))  # one forwarding error
            assert router.call(lambda: list(policy.book.workers)) == []
            status, _, text = call("POST", router.url + "/generate", {"text": "a"})
            assert status == 503 and "No worker available" in text
    finally:
        fake.stop()


_FINISHING_CHUNK = {
    "output_ids": [7, 8],
    "meta_info": {
        "id": "x",
        "prompt_tokens": 1,
        "completion_tokens": 2,
        "finish_reason": {"type": "length", "length": 2},
    },
}


class _NeverEnds:
    """A worker whose streamed /generate sends its finishing chunk and then neither `data: [DONE]`
    nor the body's end; it records when the router closes that connection."""

    def __init__(self) -> None:
        import threading

        self.closed = threading.Event()
        self._loop = asyncio.new_event_loop()
        ready = threading.Event()

        async def start() -> None:
            self._server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
            self.url = f"http://127.0.0.1:{self._server.sockets[0].getsockname()[1]}"
            ready.set()

        def main() -> None:
            self._loop.run_until_complete(start())
            self._loop.run_forever()

        self._thread = threading.Thread(target=main, daemon=True)
        self._thread.start()
        ready.wait(10)

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(next((line.split(b":")[1] for line in head.split(b"\r\n")
                               if line.lower().startswith(b"content-length")), b"0"))  # fmt: skip
            await reader.readexactly(length)
            if not head.startswith(b"POST /generate"):
                writer.write(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                continue
            event = b"data: " + json.dumps(_FINISHING_CHUNK).encode() + b"\n\n"
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
            )
            writer.write(b"%x\r\n%s\r\n" % (len(event), event))
            await reader.read()  # nothing more is sent; returns when the router closes it
            self.closed.set()
            writer.close()
            return

    def stop(self) -> None:
        self._loop.call_soon_threadsafe(self._server.close)
        self._loop.call_soon_threadsafe(self._loop.stop)
        self._thread.join(10)


def test_a_worker_that_never_ends_a_finished_answer_has_its_connection_closed(monkeypatch):
    import l4_sglang.router.forwarding as forwarding

    monkeypatch.setattr(forwarding, "FINISHED_LEG_GRACE_S", 0.5)
    fake = _NeverEnds()
    try:
        settings = RouterSettings(worker_urls=(fake.url,), port=0, load_poll_interval=3600)
        with BackgroundRouter(settings, policy=Scripted()) as router:
            body = {"text": "a", "stream": True, "sampling_params": {"max_new_tokens": 2}}
            status, _, text = call("POST", router.url + "/generate", body)
            # The client's answer ends at the finishing chunk, without waiting for the worker.
            events = [line[6:] for line in text.splitlines() if line.startswith("data: ")]
            assert status == 200 and events[-1] == "[DONE]", text
            assert json.loads(events[-2])["output_ids"] == [7, 8]
            assert not fake.closed.wait(0.2)  # not at once: a worker's [DONE] may still be on its way
            assert fake.closed.wait(5), "the finished leg's connection was left open"
            assert router.call(lambda: len(router.router.forwarder._http._streams)) == 0
    finally:
        fake.stop()
