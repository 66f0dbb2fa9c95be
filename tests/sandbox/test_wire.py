"""The sandbox's HTTP layer on its own: bodies sent as many pieces, slow readers, pipelining, broken peers."""

from __future__ import annotations

import asyncio
import socket
import threading
import time
from collections.abc import Iterator

import pytest

from stripe_churn.sandbox.wire import HttpServer, Request, Response, parse_query

# a body of 3,000 pieces (more than one sendmsg takes) of uneven sizes, about 2.3 MB, each piece distinct
PIECES = [(f"<{k}:".encode() + bytes([97 + k % 26]) * (k * 7 % 1500)) for k in range(3000)]
WHOLE = b"".join(PIECES)


def _handler(req: Request) -> Response:
    if req.path == "/big":
        return Response(200, list(PIECES))
    if req.path == "/truncated":
        return Response(200, list(PIECES), action="truncate")
    return Response(200, req.path.encode())


@pytest.fixture
def port() -> Iterator[int]:
    loop = asyncio.new_event_loop()
    server = HttpServer(_handler, 0)
    bound = loop.run_until_complete(server.start())
    thread = threading.Thread(target=loop.run_forever, daemon=True)
    thread.start()
    try:
        yield bound
    finally:
        asyncio.run_coroutine_threadsafe(server.close(), loop).result(10)
        loop.call_soon_threadsafe(loop.stop)
        thread.join(10)
        loop.close()


def _connect(port: int, rcvbuf: int | None = None) -> socket.socket:
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    if rcvbuf is not None:  # before connecting, so the window stays small and the server's sends are partial
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, rcvbuf)
    sock.settimeout(10)
    sock.connect(("127.0.0.1", port))
    return sock


def _read_answer(sock: socket.socket, pending: bytearray, chunk: int = 65536,
                 pause: float = 0.0) -> tuple[bytes, bytes]:
    """(head, body) of the next answer on ``sock``; ``pending`` carries bytes read past it."""
    while b"\r\n\r\n" not in pending:
        data = sock.recv(chunk)
        assert data, "connection closed before the head"
        pending += data
    end = pending.index(b"\r\n\r\n")
    head = bytes(pending[:end])
    length = int(head.lower().split(b"content-length: ")[1].split(b"\r\n")[0])
    del pending[: end + 4]
    while len(pending) < length:
        if pause:
            time.sleep(pause)
        data = sock.recv(chunk)
        assert data, "connection closed inside the body"
        pending += data
    body = bytes(pending[:length])
    del pending[:length]
    return head, body


def test_a_many_piece_body_reaches_a_slow_reader_whole_and_in_order(port: int) -> None:
    with _connect(port, rcvbuf=8192) as sock:
        # three pipelined requests: the second waits until the big answer has been handed over in full
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /after HTTP/1.1\r\nHost: t\r\n\r\n"
                     b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        pending = bytearray()
        head, body = _read_answer(sock, pending, chunk=4096, pause=0.0005)
        assert head.startswith(b"HTTP/1.1 200") and b"Connection: keep-alive" in head
        assert len(body) == len(WHOLE) and body == WHOLE
        head, body = _read_answer(sock, pending)
        assert head.startswith(b"HTTP/1.1 200") and b"Content-Length: 6\r\n" in head and body == b"/after"
        assert _read_answer(sock, pending)[1] == WHOLE
        assert not pending


def test_truncated_answer_of_a_many_piece_body(port: int) -> None:
    with _connect(port) as sock:
        sock.sendall(b"GET /truncated HTTP/1.1\r\nHost: t\r\n\r\n")
        data = bytearray()
        while chunk := sock.recv(65536):
            data += chunk
    head, _, body = bytes(data).partition(b"\r\n\r\n")
    assert f"Content-Length: {len(WHOLE)}".encode() in head and b"Connection: close" in head
    assert body == WHOLE[: len(WHOLE) // 2]


def test_a_peer_that_leaves_mid_answer_does_not_disturb_others(port: int) -> None:
    for _ in range(5):
        sock = _connect(port, rcvbuf=4096)
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\n")
        sock.recv(1000)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, b"\x01\x00\x00\x00\x00\x00\x00\x00")
        sock.close()  # a reset while the server still has most of the body to send
    with _connect(port) as sock:
        sock.sendall(b"GET /big HTTP/1.1\r\nHost: t\r\n\r\nGET /x HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\r\n")
        pending = bytearray()
        assert _read_answer(sock, pending)[1] == WHOLE
        head, body = _read_answer(sock, pending)
        assert body == b"/x" and b"Connection: close" in head
        assert sock.recv(10) == b""  # closed after the answer asked to close


@pytest.mark.parametrize("query", ["limit=100&starting_after=in_1&status=all", "expand[]=a&expand[0]=b&x=",
                                   "a=1&a=2&created[gte]=5&created[lt]=9&&flag", "types[1]=y&types[0]=x"])
def test_undecoded_queries_parse_as_their_percent_encoded_spelling(query: str) -> None:
    encoded = query.replace("[", "%5B").replace("]", "%5D")
    assert parse_query(query) == parse_query(encoded)
    assert parse_query(query + "&q=a+b") == {**parse_query(query), "q": "a b"}
