"""Blocking HTTP helpers (stdlib only) shared by the router and worker tests.

`router_http` and `worker_http` re-export these with their own defaults (timeouts, poll interval);
their conftest.py puts this folder on sys.path, so a plain `import http_helpers` works in any
pytest import mode.
"""

from __future__ import annotations

import http.client
import json
import socket
import time
import urllib.error
import urllib.parse
import urllib.request


def call(method: str, url: str, body=None, raw: bytes | None = None, headers=None, timeout: float = 30.0):
    """(status, headers, text) of one request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    req = urllib.request.Request(url, data=data, method=method, headers=hdrs)
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def get_json(url: str, headers=None, timeout: float = 30.0):
    status, _, text = call("GET", url, headers=headers, timeout=timeout)
    assert status == 200, text
    return json.loads(text)


def post_json(url: str, body, headers=None, timeout: float = 30.0):
    status, _, text = call("POST", url, body, headers=headers, timeout=timeout)
    assert status == 200, text
    return json.loads(text)


def timed_sse(url: str, body, timeout: float = 30.0, strict: bool = False) -> list[tuple[float, str]]:
    """(arrival time, payload) of each `data:` event of a streaming POST, [DONE] included.

    `strict`: also assert that events are separated by exactly one blank line (the worker's
    tests check its framing; the router's pass other lines through)."""
    parts = urllib.parse.urlsplit(url)
    conn = http.client.HTTPConnection(parts.hostname, parts.port, timeout=timeout)
    try:
        conn.request("POST", parts.path, json.dumps(body), {"Content-Type": "application/json"})
        resp = conn.getresponse()
        assert resp.status == 200, resp.read()
        assert resp.getheader("Content-Type").startswith("text/event-stream")
        events = []
        while True:
            line = resp.readline()
            if not line:
                return events
            if line.startswith(b"data: "):
                events.append((time.perf_counter(), line[6:].rstrip(b"\n").decode()))
            elif strict:
                assert line == b"\n", line  # events are separated by one blank line
    finally:
        conn.close()


def poll(predicate, timeout: float = 10.0, interval: float = 0.005):
    """The first truthy value of predicate(), polled until `timeout`."""
    deadline = time.monotonic() + timeout
    while True:
        value = predicate()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError("condition not met in time")
        time.sleep(interval)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]
