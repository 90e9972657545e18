"""Running a launched fleet: start the worker processes, wait for their /health, serve the
router in this process until a signal, drain it, then stop every worker's process group.

`launch.py` decides what to start (the `WorkerPlan`s, from its flags); this module starts it.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from dataclasses import dataclass, field


class LaunchError(RuntimeError):
    """A configuration the launcher cannot start (the message says why)."""


@dataclass
class WorkerPlan:
    name: str
    url: str
    cmd: list[str]
    env: dict[str, str] = field(default_factory=dict)
    """Variables added to the launcher's environment."""


def _die_with_parent() -> None:  # pragma: no cover - runs in the child
    """Linux: the child gets SIGTERM if the launcher dies (even by SIGKILL)."""
    with contextlib.suppress(Exception):
        import ctypes

        ctypes.CDLL("libc.so.6", use_errno=True).prctl(1, signal.SIGTERM)  # PR_SET_PDEATHSIG


def spawn_group(
    cmd: Sequence[str], env: dict[str, str] | None = None, *, die_with_parent: bool = True, **popen
) -> subprocess.Popen:
    """`cmd` as the leader of its own process group (so the whole group can be stopped, or left
    running); with `die_with_parent`, it also gets SIGTERM when this process dies (Linux)."""
    preexec = _die_with_parent if die_with_parent and sys.platform.startswith("linux") else None
    return subprocess.Popen(
        list(cmd), env={**os.environ, **(env or {})}, start_new_session=True, preexec_fn=preexec, **popen
    )


def pid_alive(pid: int) -> bool:
    """Whether `pid` runs (a zombie does not)."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except OSError:
        return False


def stop_group(pid: int, grace: float, popen: subprocess.Popen | None = None) -> tuple[int | None, bool]:
    """SIGTERM to the process group led by `pid`, up to `grace` s for its leader to go, then SIGKILL
    to the group (children that outlive their leader, such as SGLang's scheduler processes).
    Returns (the leader's exit status if `popen` is ours, whether it went within the grace)."""
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGTERM)
    end = time.monotonic() + grace
    in_time = False
    while time.monotonic() < end:
        if (popen.poll() is not None) if popen is not None else not pid_alive(pid):
            in_time = True
            break
        time.sleep(0.2)
    with contextlib.suppress(ProcessLookupError, PermissionError):
        os.killpg(pid, signal.SIGKILL)
    rc = None
    if popen is not None:
        with contextlib.suppress(subprocess.TimeoutExpired):
            rc = popen.wait(10)
    return rc, in_time


class Children:
    """Worker processes, each the leader of its own process group."""

    def __init__(self) -> None:
        self.procs: list[tuple[WorkerPlan, subprocess.Popen]] = []

    def spawn(self, plan: WorkerPlan) -> None:
        self.procs.append((plan, spawn_group(plan.cmd, plan.env)))

    def exited(self) -> list[tuple[WorkerPlan, int]]:
        return [(plan, p.returncode) for plan, p in self.procs if p.poll() is not None]

    def stop_all(self, timeout: float = 15.0) -> None:
        for _, p in self.procs:
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(p.pid, signal.SIGTERM)
        deadline = time.monotonic() + timeout
        for _, p in self.procs:
            with contextlib.suppress(subprocess.TimeoutExpired):
                p.wait(max(deadline - time.monotonic(), 0.1))
        for _, p in self.procs:
            # The group too: a worker's own children (SGLang's scheduler processes) may outlive it.
            stop_group(p.pid, 0.0, p)


async def wait_healthy(
    plans: Sequence[WorkerPlan], children: Children, timeout: float, stop: asyncio.Event
) -> None:
    import aiohttp

    start = time.monotonic()
    last_report = start
    pending = {p.url for p in plans}
    async with aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=2)) as session:
        while pending:
            dead = children.exited()
            if dead:
                plan, rc = dead[0]
                raise LaunchError(f"worker {plan.name} exited with code {rc} before it was healthy")
            for url in list(pending):
                with contextlib.suppress(aiohttp.ClientError, OSError, TimeoutError):
                    async with session.get(url + "/health") as resp:
                        if resp.status == 200:
                            pending.discard(url)
            if not pending:
                break
            now = time.monotonic()
            if now - start > timeout:
                raise LaunchError(
                    f"{len(pending)} worker(s) not healthy after {timeout:.0f} s: {sorted(pending)}"
                )
            if now - last_report >= 10:
                last_report = now
                print(
                    f"l4_sglang: waiting for {len(pending)} of {len(plans)} worker(s) "
                    f"({now - start:.0f} s of {timeout:.0f} s)",
                    file=sys.stderr,
                    flush=True,
                )
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 0.2)
            if stop.is_set():
                raise LaunchError("stopped while waiting for the workers")


async def smoke_request(url: str, model: str) -> str:
    """One chat completion through the router; its text."""
    import aiohttp

    body = {"model": model, "messages": [{"role": "user", "content": "Say hello."}], "max_tokens": 8}
    async with (
        aiohttp.ClientSession(timeout=aiohttp.ClientTimeout(total=60)) as session,
        session.post(url + "/v1/chat/completions", json=body) as resp,
    ):
        out = await resp.json()
        if resp.status != 200:
            raise LaunchError(f"smoke request failed: HTTP {resp.status} {out}")
        return out["choices"][0]["message"]["content"]


async def run(plans: list[WorkerPlan], settings, wait_timeout: float, smoke: bool, model: str) -> int:
    from l4_sglang.router.app import Router

    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        with contextlib.suppress(NotImplementedError):
            loop.add_signal_handler(sig, stop.set)
    children = Children()
    router: Router | None = None
    try:
        for plan in plans:
            children.spawn(plan)
        print(
            f"l4_sglang: started {len(plans)} worker(s); waiting for /health ...", file=sys.stderr, flush=True
        )
        await wait_healthy(plans, children, wait_timeout, stop)
        router = Router(settings)
        await router.start()
        print(
            f"l4_sglang: serving on {router.url} (policy {settings.policy}, {len(plans)} worker(s))",
            flush=True,
        )
        print(
            f"  curl {router.url}/v1/chat/completions -H 'Content-Type: application/json' "
            f'-d \'{{"model": "{model}", "max_tokens": 64, '
            f'"messages": [{{"role": "user", "content": "Hi"}}]}}\'',
            flush=True,
        )
        print(f"  stages: {router.url}/l4/stages   metrics: {router.url}/metrics   Ctrl-C stops", flush=True)
        if smoke:
            text = await smoke_request(router.url, model)
            print(f"l4_sglang: smoke test passed, a chat completion came back: {text!r}", flush=True)
            return 0
        reported: set[str] = set()
        while not stop.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), 1.0)
            dead = children.exited()
            for plan, rc in dead:
                if plan.name not in reported:
                    reported.add(plan.name)
                    print(f"l4_sglang: worker {plan.name} exited with code {rc}", file=sys.stderr, flush=True)
            if len(dead) == len(plans):
                print("l4_sglang: every worker has exited; stopping", file=sys.stderr, flush=True)
                return 1
        # Drain before the workers go: requests in flight finish (a second signal cuts them).
        print(
            f"l4_sglang: draining (at most {settings.drain_timeout:g} s; a second Ctrl-C stops at once)",
            file=sys.stderr,
            flush=True,
        )
        stop.clear()
        drain, again = asyncio.create_task(router.drain()), asyncio.create_task(stop.wait())
        await asyncio.wait({drain, again}, return_when=asyncio.FIRST_COMPLETED)
        for task in (drain, again):
            task.cancel()
        left = drain.result() if drain.done() and not drain.cancelled() else None
        cut = "cut short" if left is None else f"{left} request(s) cut"
        print(f"l4_sglang: stopping the router and workers ({cut})", file=sys.stderr, flush=True)
        return 0
    except (LaunchError, ValueError, OSError) as e:  # OSError: the router's port is taken
        print(f"l4_sglang: error: {e}", file=sys.stderr, flush=True)
        return 1
    finally:
        if router is not None:
            await router.stop()
        children.stop_all()
