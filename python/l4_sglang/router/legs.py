"""One worker request of a generation (a leg), and how a worker says no.

A streamed `Leg` is fed by its connection (`http1.WorkerHttp.post_stream`)
and read by `Forwarder.run`; a `PlainLeg` gets its whole answer at once.
"""

from __future__ import annotations

import asyncio
import json
from dataclasses import dataclass, field

from l4_sglang.router.http1 import Exchange

MAX_FAILOVERS = 3
"""Resumes in a row without a new token before a request is given up."""
LEG_QUEUE_HIGH = 256
"""Worker chunks a leg holds unread before its connection stops reading..."""
LEG_QUEUE_LOW = 32
"""...and how few before it reads again."""


class WorkerRejected(Exception):
    """The worker refused the request (4xx, or an error event) before generating anything."""

    def __init__(self, status: int, message: str) -> None:
        super().__init__(message)
        self.status = status
        self.message = message


class LegFailed(Exception):
    """A worker could not be reached or answered 5xx."""


class Signal:
    """Not a chunk: tells a leg's consumer to look at its request, or that the leg ended."""

    def __init__(self, name: str, error: BaseException | None = None) -> None:
        self.name = name
        self.error = error


WAKE = Signal("wake")
"""A proposal or an abort came for the request: its run loop looks again."""


@dataclass(eq=False)
class Leg:
    """A streamed worker request; its connection feeds `queue` (as `http1.StreamEvents`)."""

    worker: str
    rid: str
    exchange: Exchange = field(default_factory=Exchange)
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    received: int = 0
    """Ids this leg has delivered."""
    incremental: bool | None = None
    """The worker streams only new ids per chunk (SGLang --incremental-streaming-output)."""
    finished: bool = False
    """The worker sent this leg's finishing chunk."""
    paused: bool = False
    """The connection stopped reading: the queue was full (a slow client)."""

    def event(self, payload: bytes) -> None:
        self.queue.put_nowait(payload)
        if not self.paused and self.queue.qsize() >= LEG_QUEUE_HIGH:
            # A client that reads slower than its worker writes would make the router hold every
            # chunk (with cumulative ids, memory growing with the square of the output): stop
            # reading, so TCP pushes back on the worker, until the consumer has caught up.
            self.paused = self.exchange.pause_reading()

    def caught_up(self) -> None:
        if self.queue.qsize() <= LEG_QUEUE_LOW:
            self.paused = False
            self.exchange.resume_reading()

    def end(self, error: Exception | None) -> None:
        self.queue.put_nowait(Signal("ended") if error is None else Signal("broke", error))


@dataclass(eq=False, slots=True)
class PlainLeg:
    """A non-streaming worker request: the whole answer comes at once."""

    worker: str
    rid: str
    exchange: Exchange = field(default_factory=Exchange)
    answered: bool = False


def error_message(text: str) -> str:
    """The message of a worker's error body, whatever its shape."""
    try:
        body = json.loads(text)
    except ValueError:
        return text.strip()[:500] or "the worker refused the request"
    if isinstance(body, dict):
        err = body.get("error")
        if isinstance(err, dict) and isinstance(err.get("message"), str):
            return err["message"]
        if isinstance(body.get("message"), str):
            return body["message"]
        if isinstance(body.get("detail"), str):
            return body["detail"]
    return text.strip()[:500]
