"""The event loop choice: uvloop by default where it imports, the standard loop on request."""

from __future__ import annotations

import asyncio

import pytest

from l4_sglang import eventloop


async def _loop_module() -> str:
    return type(asyncio.get_running_loop()).__module__


def test_default_is_uvloop(monkeypatch):
    pytest.importorskip("uvloop")
    monkeypatch.delenv(eventloop.ENV, raising=False)
    assert eventloop.run(_loop_module()).startswith("uvloop")


def test_env_asks_for_the_standard_loop(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "asyncio")
    assert eventloop.run(_loop_module()).startswith("asyncio")
    loop = eventloop.new_event_loop()
    try:
        assert type(loop).__module__.startswith("asyncio")
    finally:
        loop.close()


def test_bad_choice_is_an_error(monkeypatch):
    monkeypatch.setenv(eventloop.ENV, "trio")
    with pytest.raises(ValueError, match="L4_SGLANG_LOOP"):
        eventloop.loop_factory()
