"""The router's small HTTP/1.1 client for worker requests, against scripted servers: every way an
answer may be delimited, split anywhere; keep-alive reuse; a kept connection the server closed; a
request ended from outside; answers it must refuse. Then streamed answers: SSE events handed on as
they arrive, whatever the chunks and packets; their end, a dropped connection, a non-200 answer,
an oversize line, a stream closed from our side."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest

from l4_sglang.router import http1
from l4_sglang.router.http1 import Exchange, WorkerConnectionError, WorkerHttp


class Scripted:
    """A TCP server: each request head+body read is answered by `answer(request_bytes)`, written
    in pieces of `split` bytes; `close_after` closes the connection after answering, `hold_after`
    waits for the client to close it. `closed_by_client` counts the connections the client closed."""

    def __init__(
        self,
        answer: Callable[[bytes], bytes],
        split: int = 0,
        close_after: bool = False,
        hold_after: bool = False,
    ):
        self.answer, self.split, self.close_after, self.hold_after = answer, split, close_after, hold_after
        self.closed_by_client = 0
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
                if self.hold_after:
                    await reader.read()
                    raise ConnectionError
        except (asyncio.IncompleteReadError, ConnectionError):  # the client closed the connection
            self.closed_by_client += 1
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


async def until(condition: Callable[[], object]) -> None:
    """Polls `condition` until it holds (`run`'s 10 s bound the wait)."""
    while not condition():
        await asyncio.sleep(0.005)


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
        server = Scripted(lambda _: b"")  # answers nothing
        async with server as url:
            http = WorkerHttp()
            exchange = Exchange()
            task = asyncio.ensure_future(http.post(url, "/generate", b"{}", exchange))
            await until(lambda: server.requests)  # sent, waiting for its answer
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
            await until(lambda: server.requests)  # sent, waiting for its answer
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


# ---- streamed answers ----------------------------------------------------------------

EVENTS = [b'{"output_ids":[1]}', b'{"output_ids":[1,2],"meta_info":{"x":"a\\nb"}}', b"{}"]
SSE = b"".join(b"data: %s\n\n" % e for e in EVENTS) + b"data: [DONE]\n\n"


def chunked(body: bytes, size: int) -> bytes:
    """`body` as a chunked 200 event stream, cut into chunks of `size` bytes (lines split across them)."""
    head = b"HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nTransfer-Encoding: chunked\r\n\r\n"
    pieces = [body[i : i + size] for i in range(0, len(body), size)]
    return head + b"".join(b"%x\r\n%s\r\n" % (len(p), p) for p in pieces) + b"0\r\n\r\n"


class Events:
    """A `StreamEvents` that records what it is handed; `end` must come once, last."""

    def __init__(self) -> None:
        self.payloads: list[bytes] = []
        self.ends: list[Exception | None] = []
        self.ended = asyncio.Event()

    def event(self, payload: bytes) -> None:
        assert not self.ends, "an event after the end"
        self.payloads.append(payload)

    def end(self, error: Exception | None) -> None:
        self.ends.append(error)
        self.ended.set()

    async def wait(self) -> Exception | None:
        await self.ended.wait()
        await asyncio.sleep(0.02)  # anything wrongly handed on after the end would come now
        assert len(self.ends) == 1, self.ends
        return self.ends[0]


async def stream(http: WorkerHttp, url: str, exchange: Exchange | None = None) -> tuple[int, bytes, Events]:
    events = Events()
    status, body = await http.post_stream(url, "/generate", b"{}", exchange or Exchange(), events)
    return status, body, events


async def settled(http: WorkerHttp) -> None:
    """Until no connection is still reading a streamed body (one goes back idle at its body's end)."""
    while http._streams:
        await asyncio.sleep(0.005)


@pytest.mark.parametrize("chunk", [1, 5, 64, 4096])
@pytest.mark.parametrize("split", [0, 1, 3, 7])
def test_a_chunked_event_stream_is_handed_on_whatever_its_chunks_and_packets(chunk, split):
    async def go():
        server = Scripted(fixed(chunked(SSE, chunk)), split=split)
        async with server as url:
            http = WorkerHttp({"Authorization": "Bearer k"})
            for _ in range(2):
                status, body, events = await stream(http, url)
                assert (status, body) == (200, b"")
                assert await events.wait() is None
                assert events.payloads == EVENTS
                await settled(http)
            http.close()
        assert server.connections == 1  # each answer ended cleanly: the connection was reused
        assert b"authorization: bearer k" in server.requests[0].lower()

    run(go())


@pytest.mark.parametrize("split", [0, 1, 4])
def test_a_line_split_across_chunks_and_packets_is_one_event(split):
    async def go():
        big = b'{"output_ids":[%s]}' % b",".join(b"%d" % i for i in range(3000))  # ~14 KB, one line
        body = b"data: " + big + b"\r\n\r\n: a comment\nevent: x\ndata:[DONE]\n\n"
        answer = chunked(body, 1000)
        async with Scripted(fixed(answer), split=split or 0) as url:
            status, _, events = await stream(WorkerHttp(), url)
            assert status == 200
            assert await events.wait() is None
            assert events.payloads == [big]

    run(go())


@pytest.mark.parametrize(
    "answer",
    [
        b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE), SSE),
        b"HTTP/1.1 200 OK\r\nConnection: close\r\n\r\n" + SSE,
    ],
    ids=["length", "to-close"],
)
def test_an_event_stream_delimited_by_length_or_the_connections_end(answer):
    async def go():
        async with Scripted(fixed(answer), split=5, close_after=b"close" in answer) as url:
            status, _, events = await stream(WorkerHttp(), url)
            assert status == 200
            assert await events.wait() is None
            assert events.payloads == EVENTS

    run(go())


def test_a_stream_without_done_ends_at_its_body_and_events_after_done_are_dropped():
    async def go():
        no_done = SSE.replace(b"data: [DONE]\n\n", b"")
        async with Scripted(fixed(chunked(no_done + b'data: {"tail"', 7))) as url:  # a last partial line
            _, _, events = await stream(WorkerHttp(), url)
            assert await events.wait() is None
            assert events.payloads == EVENTS
        async with Scripted(fixed(chunked(SSE + b'data: {"late":1}\n\n', 7))) as url:
            _, _, events = await stream(WorkerHttp(), url)
            assert await events.wait() is None
            assert events.payloads == EVENTS

    run(go())


@pytest.mark.parametrize(
    "cut", [0, 1, 2, 3], ids=["in-a-chunk", "in-a-size-line", "before-the-end", "length"]
)
def test_a_connection_dropped_mid_stream_ends_it_broken(cut):
    async def go():
        if cut == 3:
            answer = b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s" % (len(SSE) + 10, SSE[:-16])
        else:
            whole = chunked(SSE[:-16], 9)  # no [DONE]
            answer = [whole[:-40], whole[: whole.rindex(b"\r\n0") + 3], whole[:-5]][cut]
        server = Scripted(fixed(answer), split=3, close_after=True)
        async with server as url:
            http = WorkerHttp()
            status, _, events = await stream(http, url)
            assert status == 200
            error = await events.wait()
            assert isinstance(error, WorkerConnectionError), error
            assert events.payloads == EVENTS[: len(events.payloads)] and events.payloads
            server.close_after = False
            server.answer = fixed(chunked(SSE, 9))
            _, _, events = await stream(http, url)
            assert await events.wait() is None
        assert server.connections == 2  # the broken one was not reused

    run(go())


@pytest.mark.parametrize(
    "answer, status, body",
    [
        (
            b'HTTP/1.1 400 Bad Request\r\nContent-Length: 17\r\n\r\n{"error":"nope"}\n',
            400,
            b'{"error":"nope"}\n',
        ),
        (
            b"HTTP/1.1 503 Busy\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nbu\r\n2\r\nsy\r\n0\r\n\r\n",
            503,
            b"busy",
        ),
    ],
)
def test_a_non_200_answer_to_a_stream_is_read_whole_and_hands_on_nothing(answer, status, body):
    async def go():
        server = Scripted(fixed(answer), split=4)
        async with server as url:
            http = WorkerHttp()
            for _ in range(2):
                got, text, events = await stream(http, url)
                assert (got, text) == (status, body)
                assert events.payloads == [] and events.ends == []
        assert server.connections == 1
        assert not http._streams

    run(go())


@pytest.mark.parametrize("where", ["endless", "whole"])
def test_an_oversize_event_line_breaks_the_stream(monkeypatch, where):
    monkeypatch.setattr(http1, "MAX_LINE_BYTES", 100)

    async def go():
        if where == "endless":  # a line that never ends, in small chunks and packets
            answer, split = chunked(b"data: {}\n\ndata: " + b"x" * 400, 50)[:-5], 50
        else:  # a whole line, too long, in one packet
            answer, split = chunked(b"data: {}\n\ndata: " + b"x" * 200 + b"\n\n" + SSE, 4096), 0
        server = Scripted(fixed(answer), split=split, hold_after=True)
        async with server as url:
            _, _, events = await stream(WorkerHttp(), url)
            error = await events.wait()
            assert isinstance(error, WorkerConnectionError) and "too long" in str(error)
            assert events.payloads == [b"{}"]
            for _ in range(200):  # the connection was closed
                if server.closed_by_client:
                    break
                await asyncio.sleep(0.01)
            assert server.closed_by_client == 1

    run(go())


def test_a_chunk_size_line_without_end_is_refused():
    async def go():
        head = b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
        async with Scripted(fixed(head + b"1" * (http1.MAX_HEAD_BYTES + 10)), hold_after=True) as url:
            _, _, events = await stream(WorkerHttp(), url)
            assert isinstance(await events.wait(), WorkerConnectionError)

    run(go())


@pytest.mark.parametrize(
    "endless",
    [
        b"HTTP/1.1 200 OK\r\nX-Long: " + b"a" * (2 * http1.MAX_HEAD_BYTES),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2;" + b"e" * (2 * http1.MAX_HEAD_BYTES),
        b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n2\r\nhi\r\n0\r\nX-T: "
        + b"t" * (2 * http1.MAX_HEAD_BYTES),
    ],
    ids=["head", "chunk-extension", "trailers"],
)
def test_a_head_chunk_line_or_trailers_without_end_are_refused(endless):
    """llhttp buffers none of these itself, but httptools gathers header values: the client bounds
    what it takes without the parser getting on (to within one read)."""

    async def go():
        async with Scripted(fixed(endless), split=1000, hold_after=True) as url:
            with pytest.raises(WorkerConnectionError, match="too long"):
                await WorkerHttp().post(url, "/generate", b"{}")

    run(go())


def test_bytes_after_the_answer_keep_its_connection_from_reuse():
    async def go():
        server = Scripted(fixed(LENGTH + b"HTTP/1.1 200 OK\r\n"))  # in the same write
        async with server as url:
            http = WorkerHttp()
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
            assert await http.post(url, "/generate", b"{}") == (200, JSON)
        assert server.connections == 2

    run(go())


def test_closing_the_exchange_mid_stream_closes_the_connection_and_hands_on_nothing_more():
    async def go():
        server = Scripted(fixed(chunked(SSE.replace(b"data: [DONE]\n\n", b""), 9)[:-5]), hold_after=True)
        async with server as url:
            http = WorkerHttp()
            exchange = Exchange()
            _, _, events = await stream(http, url, exchange)
            while len(events.payloads) < len(EVENTS):
                await asyncio.sleep(0.005)
            exchange.close()
            for _ in range(200):
                if server.closed_by_client:
                    break
                await asyncio.sleep(0.01)
            assert server.closed_by_client == 1  # the worker sees it: it aborts the request
            assert events.ends == [] and not http._streams
            exchange.close()  # again: nothing happens

    run(go())


def test_closing_the_exchange_after_its_stream_ended_leaves_the_reused_connection_alone():
    async def go():
        unended = chunked(SSE.replace(b"data: [DONE]\n\n", b""), 9)[:-5]
        answers = [chunked(SSE, 9), unended]
        server = Scripted(lambda _: answers.pop(0))  # then waits for a next request, or the close
        async with server as url:
            http = WorkerHttp()
            first = Exchange()
            _, _, events = await stream(http, url, first)
            await events.wait()
            await settled(http)
            second = Exchange()
            _, _, events = await stream(http, url, second)  # on the same connection, still streaming
            while len(events.payloads) < len(EVENTS):
                await asyncio.sleep(0.005)
            first.close()  # a late close of the first stream must not cut the second
            await asyncio.sleep(0.05)
            assert server.closed_by_client == 0 and events.ends == [] and http._streams
            second.close()
            for _ in range(200):
                if server.closed_by_client:
                    break
                await asyncio.sleep(0.01)
            assert server.closed_by_client == 1
        assert server.connections == 1

    run(go())


def test_a_stream_cancelled_after_its_answer_ended_leaves_its_connection_to_others(monkeypatch):
    waiting: list[asyncio.Future] = []

    class CancelAfterAnswer(http1._Conn):
        """Cancels the task waiting for the head once the whole answer is in, before it wakes."""

        def data_received(self, data: bytes) -> None:
            super().data_received(data)
            if waiting and self.waiter is None:  # ended, and the connection went back idle
                waiting.pop().cancel()

    monkeypatch.setattr(http1, "_Conn", CancelAfterAnswer)

    async def go():
        server = Scripted(fixed(chunked(SSE, 4096)))  # the whole answer in one write
        async with server as url:
            http = WorkerHttp()
            task = asyncio.ensure_future(stream(http, url))
            waiting.append(task)
            with pytest.raises(asyncio.CancelledError):
                await task
            assert not waiting
            _, _, events = await stream(http, url)
            assert await events.wait() is None and events.payloads == EVENTS
        assert server.connections == 1  # the cancelled request did not close the connection it gave back

    run(go())


def test_an_exchange_closed_while_connecting_ends_the_request_and_connects_time_out(monkeypatch):
    async def go():
        connecting = asyncio.Event()

        async def never(*args, **kwargs):
            connecting.set()
            await asyncio.sleep(3600)

        monkeypatch.setattr(asyncio.get_running_loop(), "create_connection", never)
        exchange = Exchange()
        task = asyncio.ensure_future(stream(WorkerHttp(), "http://127.0.0.1:9", exchange))
        await connecting.wait()
        exchange.close()
        with pytest.raises(WorkerConnectionError, match="closed"):
            await task
        with pytest.raises(TimeoutError):
            await stream(WorkerHttp(connect_timeout=0.05), "http://127.0.0.1:9")

    run(go())


def test_a_leg_nobody_reads_stops_reading_its_worker_then_hands_on_everything_in_order():
    """A slow client must not make the router buffer a worker's whole stream: past LEG_QUEUE_HIGH
    unread chunks the leg's connection stops reading (the worker's writes back up in TCP), and
    once the reader catches up every chunk still comes, in order, then the end."""
    from l4_sglang.router.legs import LEG_QUEUE_HIGH, Leg

    n = 4000
    events = [b'{"output_ids":[%d],"pad":"%s"}' % (i, b"x" * 2000) for i in range(n)]
    body = b"".join(b"data: %s\n\n" % e for e in events) + b"data: [DONE]\n\n"

    async def go():
        async with Scripted(fixed(chunked(body, 2048))) as url:
            http = WorkerHttp()
            leg = Leg(worker=url, rid="r")
            status, _ = await http.post_stream(url, "/generate", b"{}", leg.exchange, leg)
            assert status == 200
            await asyncio.sleep(0.3)  # time enough to read all 8 MB if nothing held it back
            held = leg.queue.qsize()
            # At most one read (asyncio takes up to 256 KiB at a time) past the mark, of 4,000.
            assert leg.paused and LEG_QUEUE_HIGH <= held <= LEG_QUEUE_HIGH + 256 * 1024 // len(events[0])
            got = []
            while True:
                item = await leg.queue.get()
                if leg.paused:
                    leg.caught_up()
                if not isinstance(item, bytes):
                    break
                got.append(item)
            assert got == events and item.name == "ended" and not leg.paused
            http.close()

    run(go())


def test_a_connection_paused_in_the_read_that_ended_its_stream_reads_again_once_idle():
    """The leg's mark and the stream's end in one read: the connection goes back idle paused;
    it must read again there, or the next request on it waits forever (a hang seen once under load)."""
    from l4_sglang.router.legs import LEG_QUEUE_HIGH, Leg

    events = [b'{"i":%d}' % i for i in range(LEG_QUEUE_HIGH + 40)]
    body = b"".join(b"data: %s\n\n" % e for e in events) + b"data: [DONE]\n\n"

    async def go():
        server = Scripted(fixed(chunked(body, len(body))))
        async with server as url:
            http = WorkerHttp()
            for _ in range(2):
                leg = Leg(worker=url, rid="r")
                assert (await http.post_stream(url, "/generate", b"{}", leg.exchange, leg))[0] == 200
                await settled(http)  # the whole answer came in one read: the connection is idle again
                assert leg.paused
                got = [leg.queue.get_nowait() for _ in range(len(events))]
                assert got == events and leg.queue.get_nowait().name == "ended"
            http.close()
        assert server.connections == 1  # the second request went on the same connection

    run(go())
