"""Small blocking HTTP helpers for the worker tests (stdlib only), and a CLI worker process."""

from __future__ import annotations

import contextlib
import http.client
import json
import os
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.parse
import urllib.request
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "gpu" / "samples"


def call(method: str, url: str, body=None, raw: bytes | None = None, timeout: float = 30.0):
    """(status, headers, text) of one request; 4xx/5xx are returned, not raised."""
    data = raw if raw is not None else (json.dumps(body).encode() if body is not None else None)
    req = urllib.request.Request(url, data=data, method=method, headers={"Content-Type": "application/json"})
    try:
        with urllib.request.urlopen(req, timeout=timeout) as resp:
            return resp.status, resp.headers, resp.read().decode()
    except urllib.error.HTTPError as e:
        return e.code, e.headers, e.read().decode()


def get_json(url: str):
    status, _, text = call("GET", url)
    assert status == 200, text
    return json.loads(text)


def post_json(url: str, body):
    status, _, text = call("POST", url, body)
    assert status == 200, text
    return json.loads(text)


def sse(url: str, body, timeout: float = 30.0) -> list[tuple[float, str]]:
    """(arrival time, payload) of each `data:` event of a streaming POST, [DONE] included."""
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
            else:
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


class WorkerProcess:
    """`python -m l4_sglang.emulated_worker` as a subprocess, ready once /health answers."""

    def __init__(self, *args: str) -> None:
        self.port = free_port()
        # The subprocess imports l4_sglang the way the tests do: the installed package.
        env = dict(os.environ)
        cmd = [sys.executable, "-m", "l4_sglang.emulated_worker", "--port", str(self.port), *args]
        self.proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT)
        self.url = f"http://127.0.0.1:{self.port}"

    def wait_ready(self, timeout: float = 30.0) -> WorkerProcess:
        def up():
            if self.proc.poll() is not None:
                raise AssertionError(f"worker exited: {self.proc.stdout.read().decode()}")
            with contextlib.suppress(OSError):
                return call("GET", self.url + "/health", timeout=1)[0] == 200
            return False

        poll(up, timeout, 0.05)
        return self

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait()
        self.proc.stdout.close()
