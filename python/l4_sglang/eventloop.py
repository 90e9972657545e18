"""The event loop the router, the emulated worker and the launcher run on: uvloop where it is installed.

SGLang and vLLM serve on uvloop; so do we, unless `L4_SGLANG_LOOP=asyncio` asks for the standard
library's loop (to rule uvloop out when chasing a bug, or where it does not build).
`L4_SGLANG_LOOP=uvloop` insists on it (an error if it is missing); unset or `auto` takes uvloop when
it imports.
"""

from __future__ import annotations

import asyncio
import os
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

ENV = "L4_SGLANG_LOOP"
CHOICES = ("auto", "uvloop", "asyncio")

T = TypeVar("T")


def loop_factory(choice: str | None = None) -> Callable[[], asyncio.AbstractEventLoop]:
    """What makes a new loop: `choice` (default: $L4_SGLANG_LOOP, else auto)."""
    choice = (choice or os.environ.get(ENV) or "auto").strip().lower()
    if choice not in CHOICES:
        raise ValueError(f"{ENV}={choice!r}: expected one of {', '.join(CHOICES)}")
    if choice != "asyncio":
        try:
            import uvloop
        except ImportError:
            if choice == "uvloop":
                raise
        else:
            return uvloop.new_event_loop
    return asyncio.new_event_loop


def new_event_loop() -> asyncio.AbstractEventLoop:
    return loop_factory()()


def run(main: Coroutine[Any, Any, T]) -> T:
    """`asyncio.run(main)` on the loop `loop_factory` picks."""
    with asyncio.Runner(loop_factory=loop_factory()) as runner:
        return runner.run(main)
