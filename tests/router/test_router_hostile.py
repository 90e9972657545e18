"""Hostile and broken clients: each bad request gets a clear 4xx JSON error (OpenAI's shape on /v1)
or a clean cancel, while a stream running beside them is unaffected; oversized bodies, trickled
heads and bodies, clients that leave or stall mid-stream. (test_router_errors.py holds the plain table.)"""

import http.client
import json
import re
import select
import socket
import threading
import time
import urllib.parse

import openai
import pytest
from router_http import MODEL, Scripted, call, get_json, poll, post_json, workers

from l4_sglang.router import BackgroundRouter, RouterSettings

CHAT = {"model": MODEL, "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3}
NOT_A_STRING = [{"role": "user", "content": 5}]
# (route, body or raw bytes, status, needle in the message, param on /v1 routes)
# fmt: off
CASES = [
    ("/v1/chat/completions", {**CHAT, "model": "gpt-4"}, 404, "'gpt-4' does not exist", "model"),
    ("/v1/completions", {"model": "nope", "prompt": "a"}, 404, "does not exist", "model"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 10**12}, 400, "maximum context length", None),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 2**70}, 400, "maximum context length", None),
    ("/v1/chat/completions", {**CHAT, "max_tokens": 1.5}, 400, "max_tokens must be", "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": "10"}, 400, "max_tokens must be", "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "max_tokens": True}, 400, "max_tokens must be", "max_tokens"),
    ("/v1/chat/completions", {**CHAT, "seed": "x"}, 400, "seed must be an integer", "seed"),
    ("/v1/chat/completions", {**CHAT, "messages": "hi"}, 400, "non-empty list", "messages"),
    ("/v1/chat/completions", {**CHAT, "messages": NOT_A_STRING}, 400, "content", "messages"),
    ("/v1/chat/completions", {**CHAT, "stream": "yes"}, 400, "stream must be a boolean", "stream"),
    ("/v1/chat/completions", {**CHAT, "stream_options": 3}, 400, "stream_options", "stream_options"),
    ("/v1/chat/completions", {**CHAT, "temperature": float("nan")}, 400, "finite", "temperature"),
    ("/v1/chat/completions", {**CHAT, "messages": [{"role": "user", "content": "x " * 140000}]},
     400, "longer than the model's context length", None),
    ("/v1/completions", {"model": MODEL, "prompt": [1] * 131073}, 400, "context length", None),
    ("/v1/completions", {"model": MODEL, "prompt": [2**40]}, 400, "token ids", "prompt"),
    ("/v1/completions", {"model": MODEL, "prompt": None}, 400, "prompt must be", "prompt"),
    ("/v1/completions", b'{"model": "m", "prompt": "\xff\xfe"}', 400, "JSON decode error", None),
    ("/v1/completions", b"\xef\xbb\xbf\x00\x01", 400, "JSON decode error", None),
    ("/v1/completions", b"", 400, "JSON decode error", None),
    ("/v1/completions", b"null", 400, "JSON object", None),
    ("/v1/completions", b'{"model": "m", "prompt": "a"' + b" " * 100, 400, "JSON decode error", None),
    ("/generate", {"text": "a", "sampling_params": {"max_new_tokens": 10**12}}, 400, "context length", None),
    ("/generate", {"input_ids": [[1, 2], "x"]}, 400, "token ids", None),
    ("/generate", {"text": "a", "sampling_params": {"min_new_tokens": 5, "max_new_tokens": 2}}, 400,
     "min_new_tokens", None),
    ("/generate", {"text": None, "input_ids": None}, 400, "Either text or input_ids", None),
    ("/generate", b'{"text": "\xc3\x28"}', 400, "JSON decode error", None),
]
# fmt: on


@pytest.fixture(scope="module")
def fleet():
    with workers(2, time_scale=0.1) as ws:
        settings = RouterSettings(
            worker_urls=tuple(w.url for w in ws),
            port=0,
            policy="round_robin",
            max_body_bytes=4 * 1024**2,
            body_timeout=1.0,
            header_timeout=1.0,
        )
        with BackgroundRouter(settings) as r:
            yield ws, r


def _raw_request(url: str, route: str, raw: bytes):
    return call("POST", url + route, raw=raw)


def test_bad_requests_get_clear_errors_and_a_stream_beside_them_is_unaffected(fleet):
    ws, router = fleet
    # A stream that runs until it is closed, beside every bad request.
    body = {"input_ids": list(range(11, 90)), "stream": True}
    body["sampling_params"] = {"max_new_tokens": 10**5, "ignore_eos": True}
    parts = urllib.parse.urlsplit(router.url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=60)
    conn.request("POST", "/generate", json.dumps(body))
    beside = conn.getresponse()
    assert beside.status == 200

    def ids_so_far() -> list[int]:
        while not (line := beside.readline()).startswith(b"data: "):
            pass
        return json.loads(line[6:])["output_ids"]

    before = len(ids_so_far())
    for route, payload, status, needle, param in CASES:
        raw = payload if isinstance(payload, bytes) else json.dumps(payload).encode()
        got, headers, text = _raw_request(router.url, route, raw)
        assert got == status, (route, payload if len(raw) < 200 else raw[:200], text[:300])
        assert headers["Content-Type"].startswith("application/json")
        err = json.loads(text)["error"]
        assert needle in err["message"], (needle, err)
        if route.startswith("/v1/"):
            assert set(err) == {"message", "type", "param", "code"}
            assert err["code"] == status and err["param"] == param, err
    # The stream went on through all of them, with the tokens a direct request gets.
    got = ids_so_far()
    conn.close()
    assert len(got) > before
    del body["stream"]
    body["sampling_params"]["max_new_tokens"] = len(got)
    assert post_json(ws[0].url + "/generate", body)["output_ids"] == got
    # The openai client sees a typed error with the message, and the router goes on serving.
    client = openai.OpenAI(base_url=router.url + "/v1", api_key="none", max_retries=0)
    with pytest.raises(openai.NotFoundError, match="does not exist"):
        client.chat.completions.create(model="gpt-4", messages=CHAT["messages"], max_tokens=2)
    out = client.chat.completions.create(model=MODEL, messages=CHAT["messages"], max_tokens=2)
    assert out.usage.completion_tokens == 2
    print(f"\n{len(CASES)} bad requests, each a 4xx; the stream beside them was unaffected")


def _connect(url: str) -> socket.socket:
    host, port = url.removeprefix("http://").split(":")
    return socket.create_connection((host, int(port)), timeout=10)


def _read_all(sock: socket.socket, timeout: float = 10) -> bytes:
    sock.settimeout(timeout)
    out = b""
    while True:
        try:
            data = sock.recv(65536)
        except (ConnectionResetError, TimeoutError):
            return out
        if not data:
            return out
        out += data


def _read_response(sock: socket.socket, timeout: float = 10) -> tuple[int, dict]:
    """(status, JSON body) of one HTTP response read off a raw socket."""
    sock.settimeout(timeout)
    raw = b""
    while True:
        head, sep, body = raw.partition(b"\r\n\r\n")
        if sep:
            length = int(re.search(rb"(?i)content-length: *(\d+)", head).group(1))
            if len(body) >= length:
                return int(head.split()[1]), json.loads(body[:length])
        data = sock.recv(65536)
        assert data, f"the connection closed before a whole response: {raw!r}"
        raw += data


def test_an_oversized_body_is_a_413(fleet):
    _, router = fleet
    big = json.dumps({"model": MODEL, "prompt": "x " * (3 * 1024**2)}).encode()
    status, _, text = call("POST", router.url + "/v1/completions", raw=big)
    assert status == 413 and "larger than the limit of 4194304 bytes" in json.loads(text)["error"]["message"]
    assert json.loads(text)["error"]["code"] == 413
    # Announced too large: refused before the body is read.
    sock = _connect(router.url)
    sock.sendall(
        b"POST /generate HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 1000000000\r\n\r\n{"
    )
    status, body = _read_response(sock)
    sock.close()
    assert status == 413 and "larger than the limit" in body["error"]["message"]
    assert post_json(router.url + "/generate", {"text": "a", "sampling_params": {"max_new_tokens": 1}})


def test_a_trickled_body_is_a_408_and_a_trickled_head_is_cut(fleet):
    _, router = fleet
    # Body: the head arrives at once, then a byte every 0.25 s; the limit is 1 s.
    sock = _connect(router.url)
    sock.sendall(
        b"POST /v1/completions HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\n"
        b"Content-Length: 200\r\n\r\n{"
    )
    started = time.monotonic()
    sent = 1
    while not select.select([sock], [], [], 0.25)[0]:
        sock.sendall(b" ")
        sent += 1
        assert time.monotonic() - started < 10, "no answer to a trickled body"
    status, body = _read_response(sock)
    sock.close()
    assert status == 408 and "not received within 1 s" in body["error"]["message"]
    assert body["error"]["type"] == "RequestTimeout" and sent < 200
    # Head: a header line every 0.25 s, never finished; the connection is closed after about 1 s.
    sock = _connect(router.url)
    sock.sendall(b"POST /generate HTTP/1.1\r\nHost: x\r\n")
    started = time.monotonic()
    closed = False
    while time.monotonic() - started < 10:
        if select.select([sock], [], [], 0.25)[0]:
            closed = sock.recv(1024) == b""
            break
        try:
            sock.sendall(b"X-Slow: yes\r\n")
        except (BrokenPipeError, ConnectionResetError):
            closed = True
            break
    held = time.monotonic() - started
    sock.close()
    assert closed and held < 5, held
    # An idle connection that sends nothing at all is closed too.
    sock = _connect(router.url)
    started = time.monotonic()
    assert _read_all(sock) == b"" and time.monotonic() - started < 5
    sock.close()
    assert post_json(router.url + "/generate", {"text": "a", "sampling_params": {"max_new_tokens": 1}})


def test_an_openai_client_leaving_mid_stream_aborts_its_request_on_the_worker():
    with workers(1, time_scale=0.2) as ws:
        policy = Scripted()
        with BackgroundRouter(RouterSettings(worker_urls=(ws[0].url,), port=0), policy=policy) as router:
            client = openai.OpenAI(base_url=router.url + "/v1", api_key="none", max_retries=0)
            for chat in (True, False):
                kw = {"model": MODEL, "max_tokens": 10**5, "stream": True, "extra_body": {"ignore_eos": True}}
                if chat:
                    stream = client.chat.completions.create(messages=CHAT["messages"], **kw)
                else:
                    stream = client.completions.create(prompt="forever", **kw)
                for i, _ in enumerate(stream):
                    if i == 5:
                        break
                assert get_json(ws[0].url + "/v1/loads")["aggregate"]["total_reqs"] == 1
                stream.close()
                poll(lambda: get_json(ws[0].url + "/v1/loads")["aggregate"]["total_reqs"] == 0, timeout=10)
            poll(lambda: len(policy.aborted) == 2)
            assert not policy.book.requests
            # ... and the router goes on serving.
            out = client.completions.create(model=MODEL, prompt="still here", max_tokens=3)
            assert out.usage.completion_tokens == 3


def test_a_client_that_stalls_mid_stream_holds_back_its_worker_and_then_gets_every_token(monkeypatch):
    """A client that stops reading: the router stops reading the worker once a leg holds
    LEG_QUEUE_HIGH chunks (no unbounded buffering), and reads on once the client does."""
    from l4_sglang.router import legs

    resumed = []
    caught_up = legs.Leg.caught_up
    monkeypatch.setattr(legs.Leg, "caught_up", lambda leg: resumed.append(1) or caught_up(leg))
    paused = threading.Event()
    event = legs.Leg.event

    def noting_the_pause(leg, payload: bytes) -> None:
        event(leg, payload)
        if leg.paused:
            paused.set()

    monkeypatch.setattr(legs.Leg, "event", noting_the_pause)
    new = 2000  # cumulative ids: ~20 MB of events, far more than the sockets' buffers hold
    params = {"max_new_tokens": new, "ignore_eos": True}
    body = json.dumps({"input_ids": [5, 6, 7], "stream": True, "sampling_params": params}).encode()
    with workers(1, time_scale=0.05) as ws:
        settings = RouterSettings(worker_urls=(ws[0].url,), port=0, policy="round_robin")
        with BackgroundRouter(settings) as router:
            host, port = router.url.removeprefix("http://").split(":")
            conn = http.client.HTTPConnection(host, int(port), timeout=30)
            conn.sock = socket.socket()
            conn.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
            conn.sock.settimeout(30)
            conn.sock.connect((host, int(port)))
            conn.request("POST", "/generate", body=body, headers={"Content-Type": "application/json"})
            # The client reads nothing until the router has stopped reading the worker.
            assert paused.wait(30), "the leg never paused"
            raw = conn.getresponse().read()
            conn.close()
    events = [line[5:].strip() for line in raw.split(b"\n") if line.startswith(b"data:")]
    assert events[-1] == b"[DONE]"
    last = json.loads(events[-2])
    assert len(last["output_ids"]) == new and last["meta_info"]["finish_reason"]["type"] == "length"
    assert resumed  # the leg was paused (it held LEG_QUEUE_HIGH chunks) and read on once drained
