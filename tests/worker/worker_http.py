"""Small blocking HTTP helpers for the worker tests (stdlib only), and a CLI worker process."""

from __future__ import annotations

import contextlib
import os
import subprocess
import sys
from pathlib import Path

from http_helpers import call, free_port, get_json, poll, post_json, timed_sse

__all__ = ["REPO", "SAMPLES", "WorkerProcess", "call", "free_port", "get_json", "poll", "post_json", "sse"]

REPO = Path(__file__).resolve().parents[2]
SAMPLES = REPO.parent / "shared" / "gpu" / "samples"


def sse(url: str, body, timeout: float = 30.0) -> list[tuple[float, str]]:
    """(arrival time, payload) of each `data:` event of a streaming POST, [DONE] included."""
    return timed_sse(url, body, timeout, strict=True)


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
