"""A small HTTP/1.1 client for the router's non-streaming worker requests.

aiohttp's client costs more CPU per tiny request than all of the router's
own work on it (about 0.13 ms on a 2-core VM), so plain requests (a whole
JSON answer, no stream) go through this instead: one asyncio protocol per
keep-alive connection, an idle list per worker, one request at a time per
connection, answers delimited by Content-Length, chunked encoding or the
connection's end. Streams, health checks and aborts stay on aiohttp.

`Exchange.close()` from elsewhere on the loop ends a request in flight (the
waiting `post` raises ConnectionError): the forwarder uses it when the
worker is ejected.
"""

from __future__ import annotations

import asyncio
import ssl
from collections import deque
from collections.abc import Mapping
from urllib.parse import urlsplit

MAX_HEAD_BYTES = 64 * 1024
MAX_BODY_BYTES = 256 * 1024**2
MAX_IDLE_PER_WORKER = 256
"""Idle keep-alive connections kept per worker (more are closed as they come back)."""


class WorkerConnectionError(ConnectionError):
    """The connection broke, or the answer was not HTTP/1.x this client understands."""


class _Conn(asyncio.Protocol):
    """One connection: feeds the bytes of one answer at a time to a future."""

    def __init__(self) -> None:
        self.transport: asyncio.Transport | None = None
        self.waiter: asyncio.Future | None = None
        self.buf = bytearray()
        self.reusable = True
        self.lost = False
        self._status = 0
        self._length: int | None = None  # body bytes; None: chunked or until the end
        self._chunked = False
        self._body_at = -1  # where the body starts in buf (-1: head not complete)
        self._chunks: list[bytes] = []

    # asyncio callbacks
    def connection_made(self, transport) -> None:
        self.transport = transport

    def connection_lost(self, exc: Exception | None) -> None:
        self.lost = True
        self.reusable = False
        waiter = self.waiter
        if waiter is None or waiter.done():
            return
        if self._body_at >= 0 and self._length is None and not self._chunked:
            self._finish(bytes(self.buf[self._body_at :]))  # the body ran to the connection's end
        else:
            waiter.set_exception(WorkerConnectionError(f"connection lost: {exc or 'closed by the worker'}"))

    def data_received(self, data: bytes) -> None:
        if self.waiter is None or self.waiter.done():
            self.reusable = False  # bytes nobody asked for: do not trust this connection again
            return
        self.buf += data
        try:
            if self._body_at < 0 and not self._parse_head():
                return
            self._parse_body()
        except WorkerConnectionError as e:
            self.reusable = False
            self.waiter.set_exception(e)
            if self.transport is not None:
                self.transport.close()

    # parsing
    def start(self, waiter: asyncio.Future) -> None:
        self.waiter = waiter
        self.buf.clear()
        self._status, self._length, self._chunked, self._body_at = 0, None, False, -1
        self._chunks = []

    def _parse_head(self) -> bool:
        end = self.buf.find(b"\r\n\r\n")
        if end < 0:
            if len(self.buf) > MAX_HEAD_BYTES:
                raise WorkerConnectionError("the answer's head is too long")
            return False
        lines = bytes(self.buf[:end]).split(b"\r\n")
        status = lines[0].split(None, 2)
        if len(status) < 2 or not status[0].startswith(b"HTTP/1.") or not status[1].isdigit():
            raise WorkerConnectionError(f"not an HTTP/1.x answer: {lines[0][:80]!r}")
        self._status = int(status[1])
        if 100 <= self._status < 200:  # informational (103 Early Hints): the answer follows
            del self.buf[: end + 4]
            return self._parse_head()
        if status[0] == b"HTTP/1.0":
            self.reusable = False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            name = name.strip().lower()
            value = value.strip().lower()
            if name == b"content-length":
                if not value.isdigit() or int(value) > MAX_BODY_BYTES:
                    raise WorkerConnectionError(f"bad Content-Length {value[:40]!r}")
                self._length = int(value)
            elif name == b"transfer-encoding":
                self._chunked = value.endswith(b"chunked")
            elif name == b"connection" and b"close" in value:
                self.reusable = False
        if self._status in (204, 304):
            self._length, self._chunked = 0, False  # never a body
        if self._chunked:
            self._length = None
        elif self._length is None:
            self.reusable = False  # delimited by the connection's end
        self._body_at = end + 4
        return True

    def _parse_body(self) -> None:
        if self._length is not None:
            end = self._body_at + self._length
            if len(self.buf) >= end:
                if len(self.buf) > end:
                    self.reusable = False
                self._finish(bytes(self.buf[self._body_at : end]))
            return
        if not self._chunked:
            if len(self.buf) - self._body_at > MAX_BODY_BYTES:
                raise WorkerConnectionError("the answer is too large")
            return
        # Chunked: consume whole chunks from the front of the body.
        pos = self._body_at
        while True:
            eol = self.buf.find(b"\r\n", pos)
            if eol < 0:
                break
            size_text = bytes(self.buf[pos:eol]).split(b";", 1)[0].strip()
            try:
                size = int(size_text, 16)
            except ValueError:
                raise WorkerConnectionError(f"bad chunk size {size_text[:20]!r}") from None
            if size == 0:  # then trailers (usually none), ended by a blank line
                if self.buf[eol + 2 : eol + 4] == b"\r\n":
                    end = eol + 4
                else:
                    end = self.buf.find(b"\r\n\r\n", eol + 2)
                    if end < 0:
                        break
                    end += 4
                if len(self.buf) > end:
                    self.reusable = False
                self._finish(b"".join(self._chunks))
                return
            if len(self.buf) < eol + 2 + size + 2:
                break
            self._chunks.append(bytes(self.buf[eol + 2 : eol + 2 + size]))
            pos = eol + 2 + size + 2
        del self.buf[self._body_at : pos]
        if sum(map(len, self._chunks)) > MAX_BODY_BYTES:
            raise WorkerConnectionError("the answer is too large")

    def _finish(self, body: bytes) -> None:
        waiter, self.waiter = self.waiter, None
        if waiter is not None and not waiter.done():
            waiter.set_result((self._status, body))


class Exchange:
    """One request in flight; `close()` ends it from outside (the `post` raises ConnectionError)."""

    __slots__ = ("_conn", "closed")

    def __init__(self) -> None:
        self._conn: _Conn | None = None
        self.closed = False

    def close(self) -> None:
        self.closed = True
        conn = self._conn
        if conn is not None and conn.transport is not None:
            conn.reusable = False
            conn.transport.close()


class WorkerHttp:
    """Keep-alive connections to workers, for `POST` requests with a JSON body."""

    def __init__(self, headers: Mapping[str, str] | None = None, connect_timeout: float = 10.0) -> None:
        extra = "".join(f"{k}: {v}\r\n" for k, v in (headers or {}).items())
        self._extra = extra.encode("latin-1")
        self._connect_timeout = connect_timeout
        self._idle: dict[str, deque[_Conn]] = {}
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

    async def _connect(self, base_url: str) -> _Conn:
        host, port, tls, _ = self._target(base_url)
        loop = asyncio.get_running_loop()
        async with asyncio.timeout(self._connect_timeout):
            _, conn = await loop.create_connection(_Conn, host, port, ssl=tls)
        return conn

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
            if exchange is not None and exchange.closed:
                raise WorkerConnectionError("the request was closed")
            if conn is None:
                conn = await self._connect(base_url)
            if exchange is not None:
                exchange._conn = conn
            waiter = asyncio.get_running_loop().create_future()
            conn.start(waiter)
            assert conn.transport is not None
            conn.transport.write(data)
            try:
                status, answer = await waiter
            except WorkerConnectionError:
                # A keep-alive connection the worker closed as we reused it: nothing was answered.
                if reused and not conn.buf and not (exchange is not None and exchange.closed):
                    reused, conn = False, None
                    continue
                raise
            except BaseException:
                conn.reusable = False
                if conn.transport is not None:
                    conn.transport.close()
                raise
            finally:
                if exchange is not None:
                    exchange._conn = None
            self._release(base_url, conn)
            return status, answer

    def _release(self, base_url: str, conn: _Conn) -> None:
        if not conn.reusable or conn.lost or conn.transport is None or conn.transport.is_closing():
            if conn.transport is not None:
                conn.transport.close()
            return
        idle = self._idle.setdefault(base_url, deque())
        if len(idle) >= MAX_IDLE_PER_WORKER:
            conn.transport.close()
            return
        idle.append(conn)

    def close(self) -> None:
        for idle in self._idle.values():
            for conn in idle:
                if conn.transport is not None:
                    conn.transport.close()
        self._idle.clear()
