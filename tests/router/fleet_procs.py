"""Worker and router *processes* on loopback ports, for fault, load and shutdown tests.

Each is `python -m ...` of the installed package in its own process group (router_http.Process),
so a test can SIGKILL, SIGSTOP or SIGTERM one of them and read its /proc entry.
"""

from __future__ import annotations

import contextlib
import re
from collections.abc import Iterator
from pathlib import Path

from router_http import Process, call, free_port, poll


def up(url: str) -> bool:
    try:
        return call("GET", url + "/health", timeout=2)[0] == 200
    except OSError:
        return False


class WorkerProc:
    """An emulated worker process on a fixed port (so it can be started again after a kill)."""

    def __init__(self, log_dir: Path, time_scale: float, *extra: str, port: int | None = None) -> None:
        self.port = port or free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.args = (
            "-m", "l4_sglang.emulated_worker", "--port", str(self.port),
            "--time-scale", str(time_scale), "--log-level", "warning", *extra,
        )  # fmt: skip
        self.log_dir = log_dir
        self.starts = 0
        self.proc: Process | None = None

    def start(self) -> WorkerProc:
        self.starts += 1
        self.proc = Process(*self.args, log_path=self.log_dir / f"worker-{self.port}-{self.starts}.log")
        return self

    def wait_up(self, timeout: float = 60) -> None:
        poll(lambda: up(self.url), timeout=timeout, interval=0.1)

    def stop(self, sig=None) -> None:
        if self.proc is not None:
            self.proc.stop(sig)


@contextlib.contextmanager
def worker_procs(log_dir: Path, n: int, time_scale: float, *extra: str) -> Iterator[list[WorkerProc]]:
    procs = [WorkerProc(log_dir, time_scale, *extra) for _ in range(n)]
    try:
        for p in procs:
            p.start()
        for p in procs:
            p.wait_up()
        yield procs
    finally:
        for p in procs:
            p.stop()


class RouterProc:
    """`python -m l4_sglang.launch_router` on a free port; `url` once it printed its ready line."""

    def __init__(self, log_path: Path, worker_urls: list[str], *extra: str) -> None:
        self.proc = Process(
            "-m", "l4_sglang.launch_router", "--port", "0", "--worker-urls", *worker_urls, *extra,
            log_path=log_path,
        )  # fmt: skip
        ready = re.compile(r"ready on (http://\S+)")
        found = poll(lambda: ready.search(self.proc.output()), timeout=60, interval=0.1)
        self.url = found.group(1)
        self.pid = self.proc.proc.pid

    def rss_kib(self) -> int:
        return rss_kib(self.pid)

    def output(self) -> str:
        return self.proc.output()

    def stop(self, sig=None) -> int:
        return self.proc.stop(sig)


def rss_kib(pid: int) -> int:
    """VmRSS of a process, in KiB, from /proc."""
    text = Path(f"/proc/{pid}/status").read_text()
    return int(re.search(r"^VmRSS:\s+(\d+) kB", text, re.M).group(1))
