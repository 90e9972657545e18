"""The router's small HTTP/1.1 client for plain worker requests, against scripted servers:
every way an answer may be delimited, split anywhere; keep-alive reuse; a kept connection the
server closed; a request ended from outside; answers it must refuse."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from l4_sglang.router.http1 import Exchange, WorkerConnectionError, WorkerHttp


class Scripted:
    """A TCP server: each request head+body read is answered by `answer(request_bytes)`, written
    in pieces of `split` bytes; `close_after` closes the connection after answering."""

    def __init__(self, answer: Callable[[bytes], bytes], split: int = 0, close_after: bool = False):
        self.answer, self.split, self.close_after = answer, split, close_after
        self.connections = 0
        self.requests: list[bytes] = []
        self.writers: list[asyncio.StreamWriter] = []

    async def __aenter__(self) -> str:
        self.server = await asyncio.start_server(self._serve, "127.0.0.1", 0)
        return f"http://127.0.0.1:{self.server.sockets[0].getsockname()[1]}"

    async def __aexit__(self, *exc) -> None:
        for w in self.writers:
            w.close()
        self.server.close()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.connections += 1
        self.writers.append(writer)
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
                request = head + await reader.readexactly(length)
                self.requests.append(request)
                data = self.answer(request)
                if not data:  # answer nothing: wait for the client to give up
                    await reader.read()
                    raise ConnectionError
                step = self.split or len(data)
                for i in range(0, len(data), step):
                    writer.write(data[i : i + step])
                    await writer.drain()
                    if self.split:
                        await asyncio.sleep(0)
                if self.close_after:
                    writer.close()
                    return
        except (asyncio.IncompleteReadError, ConnectionError):
            writer.close()


def fixed(answer: bytes) -> Callable[[bytes], bytes]:
    return lambda _: answer


JSON = b'{"output_ids":[1,2]}'
LENGTH = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: %d\r\n\r\n%s" % (
    len(JSON),
    JSON,
)
CHUNKED = (
    b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
    b"5;ext=1\r\n" + JSON[:5] + b"\r\n" + b"%x\r\n" % (len(JSON) - 5) + JSON[5:] + b"\r\n0\r\n\r\n"
)
TRAILERS = CHUNKED[: -len(b"\r\n")] + b"X-Trailer: 1\r\n\r\n"
CLOSE_DELIMITED = b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + JSON


def run(coro):
    return asyncio.run(asyncio.wait_for(coro, 10))


@pytest.mark.parametrize("answer", [LENGTH, CHUNKED, TRAILERS], ids=["length", "chunked", "trailers"])
@pytest.mark.parametrize("split", [0, 1, 7])
def test_kept_alive_answers_split_anywhere(answer, split):
    async def go():
        server = Scripted(fixed(answer), split=split)
        async with server as url:
            http = WorkerHttp({"Authorization": "Bearer k"})
            for i in range(3):
                assert await http.post(url, "/generate", b'{"i":%d}' % i) == (200, JSON)
            http.close()
        assert server.connections == 1  # one connection, reused
        head = server.requests[0].split(b"\r\n\r\n")[0].lower()
        assert head.startswith(b"post /generate http/1.1\r\n")
        for line in (b"host: 127.0.0.1:", b"content-length: 7", b"authorization: bearer k"):
            assert line in head
        assert [r.split(b"\r\n\r\n")[1] for r in server.requests] == [b'{"i":0}', b'{"i":1}', b'{"i":2}']

    run(go())


@pytest.mark.parametrize("answer", [CLOSE_DELIMITED, b"HTTP/1.0 200 OK\r\n\r\n" + JSON])
def test_an_answer_to_the_connections_end_is_read_whole_and_not_reused(answer):
    async def go():
        server = Scripted(fixed(answer), split=3, close_after=True)
        async with server as url:
            http = WorkerHttp()
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
        assert server.connections == 2

    run(go())


def test_informational_answers_are_skipped_and_204_has_no_body():
    async def go():
        hints = b"HTTP/1.1 103 Early Hints\r\nLink: </x>\r\n\r\n"
        server = Scripted(fixed(hints + LENGTH), split=5)
        async with server as url:
            assert await WorkerHttp().post(url, "/generate", b"{}") == (200, JSON)
        server = Scripted(fixed(b"HTTP/1.1 204 No Content\r\n\r\n"))
        async with server as url:
            http = WorkerHttp()
            assert await http.post(url, "/generate", b"{}") == (204, b"")
            assert await http.post(url, "/generate", b"{}") == (204, b"")
        assert server.connections == 1

    run(go())


def test_connection_close_and_error_statuses():
    async def go():
        answer = b"HTTP/1.1 503 Busy\r\nContent-Length: 4\r\nConnection: close\r\n\r\nbusy"
        server = Scripted(fixed(answer))
        async with server as url:
            http = WorkerHttp()
            assert await http.post(url, "/generate", b"{}") == (503, b"busy")
            assert await http.post(url, "/generate", b"{}") == (503, b"busy")
        assert server.connections == 2

    run(go())


def test_a_kept_connection_the_server_closed_is_retried_afresh():
    async def go():
        server = Scripted(fixed(LENGTH))
        async with server as url:
            http = WorkerHttp()
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
            for w in server.writers:  # the server drops its idle keep-alive connection
                w.close()
            await asyncio.sleep(0.05)
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
        assert server.connections == 2

    run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"SSH-2.0-OpenSSH\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: -1\r\n\r\n",
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\nzz\r\n",
        b"HTTP/1.1 200 OK\r\nContent-Length: 100\r\n\r\nshort",  # then the server closes
    ],
)
def test_broken_answers_raise_connection_errors(answer):
    async def go():
        async with Scripted(fixed(answer), close_after=True) as url:
            with pytest.raises(WorkerConnectionError):
                await WorkerHttp().post(url, "/generate", b"{}")

    run(go())


def test_closing_the_exchange_ends_a_request_in_flight():
    async def go():
        async with Scripted(lambda _: b"") as url:  # answers nothing
            http = WorkerHttp()
            exchange = Exchange()
            task = asyncio.ensure_future(http.post(url, "/generate", b"{}", exchange))
            await asyncio.sleep(0.1)
            assert not task.done()
            exchange.close()
            with pytest.raises(ConnectionError):
                await task
            with pytest.raises(ConnectionError):  # a closed exchange sends nothing more
                await http.post(url, "/generate", b"{}", exchange)

    run(go())


def test_a_cancelled_request_drops_its_connection():
    async def go():
        server = Scripted(lambda _: b"")
        async with server as url:
            http = WorkerHttp()
            task = asyncio.ensure_future(http.post(url, "/generate", b"{}"))
            await asyncio.sleep(0.1)
            task.cancel()
            with pytest.raises(asyncio.CancelledError):
                await task
            server.answer = fixed(LENGTH)
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
        assert server.connections == 2  # the half-answered connection was not reused

    run(go())


def test_an_unreachable_worker_is_an_oserror():
    async def go():
        server = await asyncio.start_server(lambda r, w: None, "127.0.0.1", 0)
        port = server.sockets[0].getsockname()[1]
        server.close()
        await server.wait_closed()
        with pytest.raises(OSError):
            await WorkerHttp().post(f"http://127.0.0.1:{port}", "/generate", b"{}")

    run(go())
