"""Run an async HTTP service (the router, an emulated worker) on its own event loop in a daemon
thread, so that synchronous code (tests, benchmarks, notebooks) can start it, call it and stop it."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from typing import Any, Protocol, Self

from l4_sglang import eventloop


class AsyncService(Protocol):
    """What `BackgroundLoop` drives: started and stopped on its loop, reachable at `url`."""

    url: str

    async def start(self) -> None: ...

    async def stop(self) -> None: ...


class BackgroundLoop:
    """Base of `BackgroundRouter` and `BackgroundWorker`: subclasses build the service in `_create`
    (called on the loop's thread) and name it for the thread and for error messages."""

    THREAD_NAME = "l4-background"
    WHAT = "the service"

    def __init__(self, start_timeout_s: float = 30.0) -> None:
        self._service: Any = None
        self._timeout = start_timeout_s
        self._loop: asyncio.AbstractEventLoop | None = None
        self._thread: threading.Thread | None = None
        self._ready = threading.Event()
        self._error: BaseException | None = None

    def _create(self) -> AsyncService:
        raise NotImplementedError

    @property
    def url(self) -> str:
        assert self._service is not None
        return self._service.url

    def _main(self) -> None:
        loop = eventloop.new_event_loop()
        self._loop = loop
        try:
            self._service = self._create()
            loop.run_until_complete(self._service.start())
        except BaseException as e:
            self._error = e
            self._ready.set()
            loop.close()
            return
        self._ready.set()
        try:
            loop.run_forever()
        finally:
            loop.run_until_complete(self._service.stop())
            loop.close()

    def call(self, fn, timeout: float = 30.0):
        """Run `fn()` (a plain function or one returning a coroutine) on the service's loop."""
        assert self._loop is not None

        async def run():
            out = fn()
            if asyncio.iscoroutine(out):
                out = await out
            return out

        return asyncio.run_coroutine_threadsafe(run(), self._loop).result(timeout)

    def start(self) -> Self:
        self._thread = threading.Thread(target=self._main, name=self.THREAD_NAME, daemon=True)
        self._thread.start()
        if not self._ready.wait(self._timeout):
            raise TimeoutError(f"{self.WHAT} did not start in time")
        if self._error is not None:
            raise RuntimeError(f"{self.WHAT} failed to start") from self._error
        return self

    def stop(self) -> None:
        if self._loop is not None and self._thread is not None and self._thread.is_alive():
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)

    def __enter__(self) -> Self:
        return self.start()

    def __exit__(self, *exc) -> None:
        with contextlib.suppress(Exception):
            self.stop()
