"""The router as a process: SIGTERM drains the requests in flight before it exits (a second
signal, or --drain-timeout, cuts them); it listens on 127.0.0.1 unless told otherwise, the api
key guards inference and admin routes, and its info-level log holds no key and no prompt."""

import http.client
import json
import signal
import threading
import time
import urllib.parse
from pathlib import Path

from fleet_procs import RouterProc
from router_http import MODEL, call, get_json, poll, workers


def _stream(url: str, body: dict, events: list, opened: threading.Event) -> None:
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    try:
        conn.request("POST", "/generate", json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200
        while line := resp.readline():
            if line.startswith(b"data: "):
                events.append(line[6:].strip().decode())
                opened.set()
    except OSError as e:
        events.append(f"error: {e!r}")
    finally:
        conn.close()


def _refused(url: str) -> bool:
    try:
        call("GET", url + "/health", timeout=2)
    except OSError:
        return True
    return False


def _start_streams(url: str, n: int, new_tokens: int):
    body = {"text": "drain me", "stream": True, "sampling_params": {"max_new_tokens": new_tokens}}
    body["sampling_params"]["ignore_eos"] = True
    streams = [([], threading.Event()) for _ in range(n)]
    threads = [threading.Thread(target=_stream, args=(url, body, ev, op)) for ev, op in streams]
    for t in threads:
        t.start()
    for _, opened in streams:
        assert opened.wait(30)
    return streams, threads


def test_sigterm_drains_requests_in_flight(tmp_path):
    with workers(1, time_scale=1.0) as ws:
        router = RouterProc(tmp_path / "router.log", [ws[0].url], "--policy", "round_robin")
        try:
            # A keep-alive connection opened before the signal.
            parts = urllib.parse.urlsplit(router.url)
            kept = http.client.HTTPConnection(parts.hostname, parts.port, timeout=30)
            kept.request("GET", "/health")
            assert kept.getresponse().read()
            # ~5 s of decoding: the drain must still be waiting when the late request comes, even
            # on a loaded machine (150 tokens took ~1 s and a loaded CI run closed the connection first).
            streams, threads = _start_streams(router.url, 10, 800)
            assert get_json(ws[0].url + "/v1/loads")["aggregate"]["total_reqs"] == 10
            router.proc.proc.send_signal(signal.SIGTERM)
            poll(lambda: _refused(router.url), timeout=10)  # it stops listening at once
            assert router.proc.proc.poll() is None, "it exited with requests in flight"
            # A new request on the open connection is told to go elsewhere.
            kept.request("POST", "/generate", json.dumps({"text": "late"}))
            late = kept.getresponse()
            assert late.status == 503 and "shutting down" in json.loads(late.read())["error"]["message"]
            kept.close()
            for t in threads:
                t.join(60)
            for events, _ in streams:
                assert events[-1] == "[DONE]", events[-2:]
                assert json.loads(events[-2])["meta_info"]["completion_tokens"] == 800
            assert router.proc.proc.wait(30) == 0
            assert "drained: every request in flight finished" in router.output()
        finally:
            router.stop()


def test_the_drain_timeout_cuts_what_is_left_and_aborts_it_on_the_worker(tmp_path):
    with workers(1, time_scale=1.0) as ws:
        router = RouterProc(tmp_path / "router.log", [ws[0].url], "--drain-timeout", "0.5")
        try:
            streams, threads = _start_streams(router.url, 3, 100000)
            started = time.monotonic()
            router.proc.proc.send_signal(signal.SIGTERM)
            assert router.proc.proc.wait(30) == 0
            assert time.monotonic() - started < 10
            for t in threads:
                t.join(30)
            for events, _ in streams:
                assert events[-1] != "[DONE]"  # cut, not finished
            poll(lambda: get_json(ws[0].url + "/v1/loads")["aggregate"]["total_reqs"] == 0, timeout=10)
            assert "3 request(s) still running" in router.output()
        finally:
            router.stop()


def _listening_addresses(port: int) -> list[str]:
    """Local addresses of the TCP sockets listening on `port`, from /proc/net/tcp{,6}."""
    found = []
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            local, state = line.split()[1], line.split()[3]
            addr, hex_port = local.split(":")
            if int(hex_port, 16) == port and state == "0A":  # LISTEN
                ipv4 = len(addr) == 8
                found.append(".".join(str(b) for b in reversed(bytes.fromhex(addr))) if ipv4 else addr)
    return found


KEY = "sk-test-KEY-7f3a9c"
SECRET_PROMPT = "the launch code is PROMPT-MARKER-4411"


def test_loopback_by_default_key_guards_and_no_secrets_in_the_log(tmp_path):
    with workers(1, time_scale=0.1) as ws:
        router = RouterProc(tmp_path / "router.log", [ws[0].url], "--api-key", KEY, "--log-level", "info")
        try:
            port = urllib.parse.urlsplit(router.url).port
            assert _listening_addresses(port) == ["127.0.0.1"]
            good = {"Authorization": f"Bearer {KEY}"}
            chat = {"model": MODEL, "messages": [{"role": "user", "content": SECRET_PROMPT}], "max_tokens": 4}
            # Inference and admin routes need the key; a wrong one (holding a prompt) is refused too.
            for method, route, body in [
                ("POST", "/v1/chat/completions", chat),
                ("POST", "/generate", {"text": SECRET_PROMPT}),
                ("GET", "/v1/models", None),
                ("GET", "/workers", None),
                ("POST", "/workers", {"url": ws[0].url}),
                ("DELETE", "/workers?url=" + ws[0].url, None),
                ("POST", "/abort_request", {"abort_all": True}),
                ("GET", "/l4/stages", None),
            ]:
                for headers in ({}, {"Authorization": f"Bearer {SECRET_PROMPT}"}, {"Authorization": KEY}):
                    status, _, text = call(method, router.url + route, body, headers=headers)
                    assert status == 401, (method, route, headers, text)
            assert call("GET", router.url + "/health")[0] == 200
            # Unauthenticated requests to made-up paths do not each add a metric label.
            for i in range(20):
                assert call("GET", router.url + f"/probe-{i}")[0] == 401
            assert "probe-" not in call("GET", router.url + "/metrics")[2]
            status, _, text = call("POST", router.url + "/v1/chat/completions", chat, headers=good)
            assert status == 200 and json.loads(text)["usage"]["completion_tokens"] == 4
            stream = {"text": SECRET_PROMPT, "stream": True, "sampling_params": {"max_new_tokens": 3}}
            assert call("POST", router.url + "/generate", stream, headers=good)[0] == 200
            bad = b'{"text": "' + SECRET_PROMPT.encode() + b'", oops}'
            assert call("POST", router.url + "/generate", raw=bad, headers=good)[0] == 400
            # Admin changes with the key: remove the worker (a request then gets a 503), add it back.
            assert call("DELETE", router.url + "/workers?url=" + ws[0].url, headers=good)[0] == 200
            assert call("POST", router.url + "/v1/chat/completions", chat, headers=good)[0] == 503
            assert call("POST", router.url + "/workers", {"url": ws[0].url}, headers=good)[0] == 200
            assert call("POST", router.url + "/v1/chat/completions", chat, headers=good)[0] == 200
        finally:
            router.stop()
        log = router.output()
        assert "worker http://127.0.0.1" in log  # info-level lines were written...
        assert KEY not in log and "PROMPT-MARKER" not in log and "launch code" not in log  # ... none of these
