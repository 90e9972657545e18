"""A small HTTP/1.1 client for the router's worker requests, plain and streamed.

aiohttp's client costs more CPU per tiny request than all of the router's
own work on it (about 0.13 ms on a 2-core VM), so `/generate` goes through
this instead: one asyncio protocol per keep-alive connection, an idle list
per worker, one request at a time per connection, answers delimited by
Content-Length, chunked encoding or the connection's end, parsed by httptools
(llhttp, Node's parser; uvicorn's too). Health checks and aborts stay on
aiohttp.

`post` returns a whole answer. `post_stream` returns at the head of a 200
answer, and its body goes on with no task of its own: the protocol splits
the SSE lines as bytes arrive and hands each `data:` payload to the caller's
`StreamEvents`, then one `end` (None at `[DONE]` or the body's clean end,
else what broke it). Any other status is read whole, as by `post`. A
connection goes back to the idle list only once its answer ended cleanly.
Heads, chunk-size lines and event lines are bounded, so a hostile worker
cannot make the router buffer without bound.

`Exchange.close()` from elsewhere on the loop ends a request, from its
connect to the end of a streamed body: a waiting `post` raises
ConnectionError, a stream gets no more events, and the worker sees its
connection close (so it aborts the request). The forwarder uses it to drop
a leg, and when the worker is ejected.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from typing import Protocol
from urllib.parse import urlsplit

import httptools

MAX_HEAD_BYTES = 64 * 1024
"""Longest head, chunk-size line or trailer section of an answer (llhttp keeps no bound of its own)."""
MAX_BODY_BYTES = 256 * 1024**2
MAX_LINE_BYTES = MAX_BODY_BYTES
"""Longest SSE line of a streamed answer: a cumulative chunk carries the whole output so far."""
MAX_IDLE_PER_WORKER = 256
"""Idle keep-alive connections kept per worker (more are closed as they come back)."""


class WorkerConnectionError(ConnectionError):
    """The connection broke, or the answer was not HTTP/1.x this client understands."""


class StreamEvents(Protocol):
    """Where a streamed answer goes; called from the connection's callbacks, on the loop."""

    def event(self, payload: bytes) -> None:
        """One `data:` payload, `[DONE]` excepted."""

    def end(self, error: Exception | None) -> None:
        """Once, last: None at `[DONE]` or the body's clean end, else the error that broke it."""


class _Conn(asyncio.Protocol):
    """One connection: reads one answer at a time, whole into `waiter`, or (a streamed 200) to `events`.

    httptools (llhttp) parses; its callbacks (`on_*`) run inside `feed_data`."""

    def __init__(self, home: WorkerHttp, base_url: str) -> None:
        self.home = home
        self.base_url = base_url
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        """Set from `start` to the answer's end; a streamed 200 resolves it at the head."""
        self.exchange: Exchange | None = None
        """The request this connection serves, until it goes back to the idle list."""
        self.events: StreamEvents | None = None
        """Where a streamed body goes; None once told its end (or when none is wanted)."""
        self.streaming = False
        self.answered = False
        """Some of the answer has arrived."""
        self.reusable = True
        self.lost = False
        self._parser: httptools.HttpResponseParser | None = None
        self._status = 0
        self._in_body = False
        self._framed = False
        """The head gave a Content-Length or chunked encoding (else the body runs to the connection's end)."""
        self._to_eof = False
        self._informational = False
        self._complete = False
        self._progress = False
        self._stalled = 0
        """Bytes fed since the parser last got on (a head, body bytes, the answer's end)."""
        self._chunks: list[bytes] = []
        self._size = 0
        self._line = bytearray()  # a streamed body's partial last line

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        if self.waiter is None:
            return
        if self._in_body and self._to_eof:
            self._body_ended()  # the body ran to the connection's end
        else:
            self._broke(WorkerConnectionError(f"connection lost: {exc or 'closed by the worker'}"))

    def data_received(self, data: bytes) -> None:
        parser = self._parser
        if self.waiter is None or parser is None:
            self._distrust()  # bytes nobody asked for
            return
        self.answered = True
        self._progress = False
        try:
            parser.feed_data(data)
        except httptools.HttpParserCallbackError as e:
            error = e.__context__
            if not isinstance(error, WorkerConnectionError):
                if error is not None:
                    raise error from None  # a fault of ours (or of the caller's events), not the worker's
                error = WorkerConnectionError(str(e))
            self._broke(error)
            return
        except (httptools.HttpParserError, httptools.HttpParserUpgrade) as e:
            self._broke(WorkerConnectionError(f"not an HTTP/1.x answer this client reads: {e!r}"))
            return
        if self._progress:
            self._stalled = 0
        else:
            self._stalled += len(data)
            if self._stalled > MAX_HEAD_BYTES and self.waiter is not None:
                # llhttp keeps no such bound: a head, a chunk-size line or trailers without end.
                self._broke(
                    WorkerConnectionError("the answer's head, a chunk-size line or trailers are too long")
                )

    # one answer
    def start(self, waiter: asyncio.Future, exchange: Exchange, events: StreamEvents | None) -> None:
        if self._parser is None or not self._complete:
            self._parser = httptools.HttpResponseParser(self)
        # (else llhttp stands at the start of the next answer, as after any kept-alive one)
        self.waiter, self.exchange, self.events = waiter, exchange, events
        self.streaming = self.answered = self._in_body = self._framed = self._to_eof = False
        self._informational = self._complete = False
        self._line.clear()
        self._status, self._stalled, self._chunks, self._size = 0, 0, [], 0

    def fail(self, error: WorkerConnectionError) -> None:
        """The request could not be sent: its waiter gets `error`."""
        self._broke(error)

    def abandon(self) -> None:
        """Our side gives up on the answer: no more events, and the worker sees the connection close."""
        self.events = None
        self._broke(WorkerConnectionError("the request was closed"))

    def _distrust(self) -> None:
        self.reusable = False
        if self.transport is not None:
            self.transport.close()

    def _broke(self, error: WorkerConnectionError) -> None:
        self._distrust()
        if self.streaming:
            self._end_stream(error)
            return
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_exception(error)

    # httptools callbacks
    def on_message_begin(self) -> None:
        if self._complete:  # the answer has ended: the rest is nobody's
            raise WorkerConnectionError("bytes after the answer")

    def on_header(self, name: bytes, value: bytes) -> None:
        if self._in_body:
            return  # a trailer
        name = name.lower()
        if name == b"content-length":
            value = value.strip()
            if not value.isdigit() or int(value) > MAX_BODY_BYTES:
                raise WorkerConnectionError(f"bad Content-Length {value[:40]!r}")
            self._framed = True
        elif name == b"transfer-encoding" and value.strip().lower().endswith(b"chunked"):
            self._framed = True

    def on_headers_complete(self) -> None:
        self._progress = True
        parser = self._parser
        assert parser is not None
        status = parser.get_status_code()
        if 100 <= status < 200:  # informational (103 Early Hints): the answer follows
            self._informational, self._framed = True, False
            return
        self._status = status
        self._in_body = True
        if parser.get_http_version() == "1.0":
            self.reusable = False
        self._to_eof = not self._framed and status not in (204, 304)
        if self._to_eof:
            self.reusable = False  # delimited by the connection's end
        if self.events is not None and status == 200:
            self.streaming = True  # the body is ours to hand on now, and the connection ours to give back
            self.home._streams.add(self)
            assert self.waiter is not None
            if not self.waiter.done():
                self.waiter.set_result((200, b""))

    def on_body(self, data: bytes) -> None:
        self._progress = True
        if self.waiter is not None:  # (else closed from our side as this read was parsed)
            self._take(data)

    def on_message_complete(self) -> None:
        self._progress = True
        if self._informational:
            self._informational = False
            return
        self._complete = True
        parser = self._parser
        if parser is not None and not parser.should_keep_alive():
            self.reusable = False  # Connection: close
        self._body_ended()

    def _take(self, data: bytes) -> None:
        if self.streaming:
            self._split_events(data)
            return
        self._chunks.append(data)
        self._size += len(data)
        if self._size > MAX_BODY_BYTES:
            raise WorkerConnectionError("the answer is too large")

    def _body_ended(self) -> None:
        if self.streaming:
            self._end_stream(None)
            return
        waiter, self.waiter = self.waiter, None
        body = b"".join(self._chunks)
        self._chunks = []
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))

    # a streamed body
    def _split_events(self, data: bytes) -> None:
        """Whole SSE lines -> `data:` payloads to `events`; a partial last line waits in `_line`."""
        pending = self._line
        start = 0
        while (eol := data.find(b"\n", start)) >= 0:
            if pending:
                pending += memoryview(data)[start:eol]
                line = bytes(pending)
                pending.clear()
            else:
                line = data[start:eol]
            start = eol + 1
            if len(line) > MAX_LINE_BYTES:
                raise WorkerConnectionError("an event line is too long")
            if line.startswith(b"data:") and self.events is not None:
                self._event(line[5:].strip())
        if start < len(data):
            if len(pending) + len(data) - start > MAX_LINE_BYTES:
                raise WorkerConnectionError("an event line is too long")
            pending += memoryview(data)[start:]

    def _event(self, payload: bytes) -> None:
        events = self.events
        assert events is not None
        if payload == b"[DONE]":
            self.events = None  # what follows is read (the connection is reused) but not handed on
            events.end(None)
        else:
            events.event(payload)

    def _end_stream(self, error: Exception | None) -> None:
        """The streamed answer is over: tell its events (unless told), then give the connection back."""
        events, self.events = self.events, None
        self.waiter = None
        self.streaming = False
        if error is not None:
            self.reusable = False
        if events is not None:
            events.end(error)
        self.home._release(self)


class Exchange:
    """One request, from its connect to the end of its answer; `close()` ends it from outside."""

    __slots__ = ("_conn", "_connecting", "closed")

    def __init__(self) -> None:
        self._conn: _Conn | None = None
        self._connecting: asyncio.Future | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        if self._connecting is not None:
            self._connecting.cancel()
        conn = self._conn
        if conn is not None and conn.exchange is self:  # (else it answered and went back to the idle list)
            conn.abandon()

    @property
    def answering(self) -> bool:
        """Its answer is still coming in on its connection."""
        conn = self._conn
        return conn is not None and conn.exchange is self and not self.closed

    def pause_reading(self) -> bool:
        """Stop reading the streamed answer (TCP backpressure on the worker); False if nothing to pause."""
        conn = self._conn
        if conn is None or conn.exchange is not self or conn.transport is None or conn.transport.is_closing():
            return False
        conn.transport.pause_reading()
        return True

    def resume_reading(self) -> None:
        conn = self._conn
        transport = conn.transport if conn is not None and conn.exchange is self else None
        if transport is not None and not transport.is_closing() and not transport.is_reading():
            transport.resume_reading()


class WorkerHttp:
    """Keep-alive connections to workers, for `POST` requests with a JSON body."""

    def __init__(self, headers: Mapping[str, str] | None = None, connect_timeout: float = 10.0) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._extra = extra.encode("latin-1")
        self._connect_timeout = connect_timeout
        self._idle: dict[str, deque[_Conn]] = {}
        self._streams: set[_Conn] = set()
        """Connections reading a streamed body (they come back by themselves at its end)."""
        self._targets: dict[str, tuple[str, int, ssl.SSLContext | None, bytes]] = {}
        self._ssl: ssl.SSLContext | None = None

    def _target(self, base_url: str) -> tuple[str, int, ssl.SSLContext | None, bytes]:
        found = self._targets.get(base_url)
        if found is None:
            parts = urlsplit(base_url)
            tls = parts.scheme == "https"
            if tls and self._ssl is None:
                self._ssl = ssl.create_default_context()
            port = parts.port or (443 if tls else 80)
            found = (parts.hostname or "", port, self._ssl if tls else None, parts.netloc.encode("idna"))
            self._targets[base_url] = found
        return found

    async def _open(self, base_url: str) -> _Conn:
        host, port, tls, _ = self._target(base_url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(lambda: _Conn(self, base_url), host, port, ssl=tls)
        return conn

    async def _connect(self, base_url: str, exchange: Exchange) -> _Conn:
        """A new connection, as a task that `exchange.close()` cancels."""
        connecting = asyncio.ensure_future(self._open(base_url))
        exchange._connecting = connecting
        try:
            return await connecting
        except asyncio.CancelledError:
            if connecting.done() and not connecting.cancelled() and connecting.exception() is None:
                connecting.result()._distrust()  # it connected just as we were cancelled
            task = asyncio.current_task()
            if exchange.closed and not (task is not None and task.cancelling()):
                raise WorkerConnectionError("the request was closed") from None
            raise
        finally:
            exchange._connecting = None

    def _take_idle(self, base_url: str) -> _Conn | None:
        idle = self._idle.get(base_url)
        while idle:
            conn = idle.pop()
            if not conn.lost and conn.transport is not None and not conn.transport.is_closing():
                return conn
        return None

    async def post(
        self, base_url: str, path: str, body: bytes, exchange: Exchange | None = None
    ) -> tuple[int, bytes]:
        """(status, body) of `POST base_url + path`; OSError or TimeoutError if the worker cannot be
        reached or the connection breaks. A reused connection found closed is retried once afresh."""
        conn, status, answer = await self._send(base_url, path, body, exchange or Exchange(), None)
        self._release(conn)
        return status, answer

    async def post_stream(
        self, base_url: str, path: str, body: bytes, exchange: Exchange, events: StreamEvents
    ) -> tuple[int, bytes]:
        """As `post`, for an event stream: a 200 answer returns (200, b"") at its head, and its body
        goes on to `events` as it arrives (`exchange.close()` ends it); any other is read whole."""
        conn, status, answer = await self._send(base_url, path, body, exchange, events)
        if status != 200:
            self._release(conn)
        return status, answer

    async def _send(
        self, base_url: str, path: str, body: bytes, exchange: Exchange, events: StreamEvents | None
    ) -> tuple[_Conn, int, bytes]:
        _, _, _, host = self._target(base_url)
        head = b"POST %s HTTP/1.1\r\nHost: %s\r\nContent-Type: application/json\r\nContent-Length: %d\r\n" % (
            path.encode(),
            host,
            len(body),
        )
        data = head + self._extra + b"\r\n" + body
        conn = self._take_idle(base_url)
        reused = conn is not None
        while True:
            if exchange.closed:
                raise WorkerConnectionError("the request was closed")
            if conn is None:
                conn = await self._connect(base_url, exchange)
            exchange._conn = conn
            waiter = asyncio.get_running_loop().create_future()
            conn.start(waiter, exchange, events)
            assert conn.transport is not None
            if conn.lost or conn.transport.is_closing():  # closed while we connected or took it
                conn.fail(WorkerConnectionError("connection lost: closed by the worker"))
            else:
                try:
                    conn.transport.write(data)
                except RuntimeError as e:  # uvloop raises on a closed transport; asyncio drops the write
                    conn.fail(WorkerConnectionError(f"connection lost: {e}"))
            try:
                status, answer = await waiter
            except WorkerConnectionError:
                # A keep-alive connection the worker closed as we reused it: nothing was answered.
                if reused and not conn.answered and not exchange.closed:
                    reused, conn = False, None
                    continue
                raise
            except BaseException:
                if conn.exchange is exchange:  # (a streamed answer may have ended and gone back already)
                    conn.abandon()
                raise
            return conn, status, answer

    def _release(self, conn: _Conn) -> None:
        conn.exchange = None
        self._streams.discard(conn)
        if not conn.reusable or conn.lost or conn.transport is None or conn.transport.is_closing():
            if conn.transport is not None:
                conn.transport.close()
            return
        if not conn.transport.is_reading():
            # Paused by its last stream's reader (backpressure) as that stream ended in the same
            # read: an idle connection must read, or it would miss its close and the next answer.
            conn.transport.resume_reading()
        idle = self._idle.setdefault(conn.base_url, deque())
        if len(idle) >= MAX_IDLE_PER_WORKER:
            conn.transport.close()
            return
        idle.append(conn)

    def close(self) -> None:
        """Close every connection: idle ones, and those still reading a streamed body."""
        for conn in list(self._streams):
            conn.abandon()
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
