"""A small HTTP/1.1 server on an asyncio loop: keep-alive, Content-Length bodies, full control of the socket.

The sandbox needs what ordinary frameworks hide: answering after a delay without blocking other
connections, dropping or resetting a connection without a response, and sending half a body. The
application is a plain callable ``handle(Request) -> Response``; this module only speaks the protocol.

A list page is a few hundred kilobytes made of cached object bytes, so a body may be a list of byte strings:
the head and those pieces go to the kernel in one ``sendmsg`` (scatter/gather) straight from the cache, with
no joined copy of the page and no copy of what the socket did not take yet (the rest is sent from memoryviews
when the socket is writable again). Sockets are driven with the loop's ``add_reader``/``add_writer`` rather
than asyncio transports, whose ``write`` copies every unsent remainder twice.
"""

from __future__ import annotations

import asyncio
import contextlib
import errno
import json
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qsl

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024
_RECV = 256 * 1024
_IOV_MAX = 1000  # buffers per sendmsg (Linux allows 1024)
_SNDBUF = 1024 * 1024  # a whole list page usually fits in one send

Action = Literal["drop", "reset", "truncate"]
# a body is one byte string, or several sent back to back (a list page from cached object bytes)
Body = bytes | list[bytes | memoryview]

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed request: method, path as sent (each segment percent-encoded: an id may hold "/"), raw query
    string, lower-cased headers and body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    """What the application answers; ``delay`` and ``action`` let it simulate latency and broken peers."""

    status: int
    body: Body
    headers: list[tuple[str, str]] = field(default_factory=list)
    content_type: str = "application/json"
    delay: float = 0.0
    action: Action | None = None
    close: bool = False


Handler = Callable[[Request], Response]


def parse_query(query: str) -> dict[str, str | list[str] | dict[str, str]]:
    """Stripe-style form query: ``a[]=x``, ``a[0]=x`` and repeats become lists, ``a[k]=v`` a dict.

    Brackets may arrive percent-encoded; ``parse_qsl`` decodes keys, so both spellings land here alike.
    """
    out: dict[str, str | list[str] | dict[str, str]] = {}
    if "%" in query or "+" in query:
        pairs = parse_qsl(query, keep_blank_values=True)
    else:  # nothing to decode (what the SDK and a syncer's cursors send): split as parse_qsl would
        pairs = [(k, v) for k, _, v in (p.partition("=") for p in query.split("&") if p)]
    for key, value in pairs:
        base, sep, rest = key.partition("[")
        if not sep:
            prev = out.get(key)
            if prev is None:
                out[key] = value
            elif isinstance(prev, list):
                prev.append(value)
            elif isinstance(prev, str):
                out[key] = [prev, value]
            continue
        sub = rest[:-1] if rest.endswith("]") else rest
        if sub == "" or sub.isdigit():
            cur = out.get(base)
            if isinstance(cur, list):
                cur.append(value)
            elif isinstance(cur, str):
                out[base] = [cur, value]
            else:
                out[base] = [value]
        else:
            cur = out.get(base)
            if not isinstance(cur, dict):
                cur = {}
                out[base] = cur
            cur[sub] = value
    return out


def body_length(body: Body) -> int:
    """Bytes in a body, whether one byte string or several."""
    return len(body) if isinstance(body, bytes) else sum(map(len, body))


def body_bytes(body: Body) -> bytes:
    """A body as one byte string (joins the pieces of a list body)."""
    return body if isinstance(body, bytes) else b"".join(body)


def _head(resp: Response, body_len: int, keep_alive: bool) -> bytes:
    reason = _REASONS.get(resp.status, "Unknown")
    lines = [
        f"HTTP/1.1 {resp.status} {reason}",
        f"Content-Type: {resp.content_type}",
        f"Content-Length: {body_len}",
        "Connection: keep-alive" if keep_alive else "Connection: close",
    ]
    lines.extend(f"{k}: {v}" for k, v in resp.headers)
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1")


class HttpConnection:
    """One connection: parse requests in order, answer each, keep the connection open when allowed.

    One answer is in flight at a time: the next pipelined request is handled once the previous answer has
    been handed to the kernel in full (so a peer that stops reading stops being served, and nothing piles up).
    """

    __slots__ = ("_buf", "_busy", "_close_after", "_closed", "_eof", "_fd", "_loop", "_out", "_reading",
                 "_server", "_sock", "_timer", "_writing")

    def __init__(self, server: HttpServer, loop: asyncio.AbstractEventLoop, sock: socket.socket) -> None:
        self._server = server
        self._loop = loop
        self._sock = sock
        self._fd = sock.fileno()
        self._buf = bytearray()
        self._out: list[bytes | memoryview] = []
        self._reading = False
        self._writing = False
        self._close_after = False
        self._busy = False  # an answer is waiting for its delay
        self._eof = False
        self._timer: asyncio.TimerHandle | None = None
        self._closed = False
        sock.setblocking(False)
        with contextlib.suppress(OSError):  # not a TCP socket
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        server.connections.add(self)
        self._start_reading()

    def close(self) -> None:
        """Close the connection now (whatever is unsent is dropped)."""
        if self._closed:
            return
        self._closed = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if self._reading:
            self._loop.remove_reader(self._fd)
        if self._writing:
            self._loop.remove_writer(self._fd)
        self._reading = self._writing = False
        self._out = []
        self._server.connections.discard(self)
        self._sock.close()

    # --- reading ----------------------------------------------------------------------------------
    def _start_reading(self) -> None:
        if not self._reading and not self._eof and not self._closed:
            self._loop.add_reader(self._fd, self._on_readable)
            self._reading = True

    def _stop_reading(self) -> None:
        if self._reading:
            self._loop.remove_reader(self._fd)
            self._reading = False

    def _on_readable(self) -> None:
        try:
            data = self._sock.recv(_RECV)
        except (BlockingIOError, InterruptedError):
            return
        except OSError:
            self.close()
            return
        if not data:  # the peer closed its side: answer what it asked in full, then close
            self._eof = True
            self._stop_reading()
            if self._busy:
                self.close()
            elif not self._out:
                self._process()
            return
        self._buf += data
        if len(self._buf) > MAX_HEAD + MAX_BODY:
            self._stop_reading()  # resumed once the buffered requests are answered
        if not self._busy and not self._out:
            self._process()

    def _parse_one(self) -> tuple[Request, bool] | None:
        """The next complete request and whether to keep the connection, or None when more bytes are needed."""
        buf = self._buf
        end = buf.find(b"\r\n\r\n")
        if end < 0:
            if len(buf) > MAX_HEAD:
                self._fail(431, "request head too large")
            return None
        lines = bytes(buf[:end]).decode("latin-1").split("\r\n")
        try:
            method, target, version = lines[0].split(" ", 2)
        except ValueError:
            self._fail(400, "malformed request line")
            return None
        headers: dict[str, str] = {}
        for line in lines[1:]:
            name, _, value = line.partition(":")
            headers[name.strip().lower()] = value.strip()
        if "chunked" in headers.get("transfer-encoding", "").lower():
            self._fail(501, "chunked request bodies are not supported")
            return None
        try:
            length = int(headers.get("content-length", "0") or "0")
        except ValueError:
            self._fail(400, "bad Content-Length")
            return None
        if length < 0 or length > MAX_BODY:
            self._fail(413, "request body too large")
            return None
        total = end + 4 + length
        if len(buf) < total:
            return None
        body = bytes(buf[end + 4 : total])
        del buf[:total]
        path, _, query = target.partition("?")
        conn = headers.get("connection", "").lower()
        keep_alive = conn != "close" if version == "HTTP/1.1" else conn == "keep-alive"
        return Request(method.upper(), path, query, headers, body), keep_alive

    def _fail(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"type": "invalid_request_error", "message": message}}).encode()
        self._buf.clear()
        self._eof = True  # nothing more is read from a peer that broke the protocol
        self._stop_reading()
        self._send(Response(status, body), keep_alive=False)

    def _process(self) -> None:
        """Answer buffered requests in order while nothing is being sent or waited for."""
        handler = self._server.handler
        while not self._closed and not self._busy and not self._out:
            parsed = self._parse_one()
            if parsed is None:
                break
            req, keep_alive = parsed
            head_only = req.method == "HEAD"  # (answered without its content, RFC 9110 9.3.2)
            try:
                resp = handler(req)
            except Exception:
                log.exception("sandbox handler failed on %s %s", req.method, req.path)
                resp = Response(500, b'{"error":{"type":"api_error","message":"Internal sandbox error."}}')
            if resp.delay > 0:
                self._busy = True
                self._timer = self._loop.call_later(resp.delay, self._deliver, resp, keep_alive, head_only)
                return
            self._send(resp, keep_alive, head_only)
        if self._closed or self._busy or self._out:
            return
        if self._eof:
            self.close()
        elif not self._reading and len(self._buf) <= MAX_HEAD + MAX_BODY:
            self._start_reading()

    def _deliver(self, resp: Response, keep_alive: bool, head_only: bool) -> None:
        self._timer = None
        self._busy = False
        self._send(resp, keep_alive, head_only)
        if not self._closed and not self._out:
            self._process()

    # --- writing ----------------------------------------------------------------------------------
    def _send(self, resp: Response, keep_alive: bool, head_only: bool = False) -> None:
        """Hand ``resp`` to the kernel; ``head_only``: its head alone, the answer to a HEAD (whose Content-Length is
        that of the content not sent)."""
        if self._closed:
            return
        if resp.action == "drop":
            self.close()
            return
        if resp.action == "reset":
            with contextlib.suppress(OSError):
                self._sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            self.close()
            return
        keep_alive = keep_alive and not resp.close
        body = resp.body
        if head_only:
            out: list[bytes | memoryview] = [_head(resp, body_length(body), keep_alive)]
        elif resp.action == "truncate":
            whole = body_bytes(body)
            out = [_head(resp, len(whole), False), whole[: len(whole) // 2]]
            keep_alive = False
        elif isinstance(body, bytes):
            out = [_head(resp, len(body), keep_alive), body]
        else:
            out = [_head(resp, sum(map(len, body)), keep_alive), *body]
        self._close_after = not keep_alive
        self._out = out
        self._flush()

    def _flush(self) -> None:
        """Hand as much of the answer to the kernel as it takes; wait for writability for the rest."""
        out = self._out
        sock = self._sock
        while out:
            try:
                sent = sock.sendmsg(out if len(out) <= _IOV_MAX else out[:_IOV_MAX])
            except (BlockingIOError, InterruptedError):
                break
            except OSError:  # the peer went away
                self.close()
                return
            done = 0
            for piece in out:
                size = len(piece)
                if sent < size:
                    break
                sent -= size
                done += 1
            if done:
                del out[:done]
            if sent:
                out[0] = memoryview(out[0])[sent:]
        if out:
            if not self._writing:
                self._loop.add_writer(self._fd, self._on_writable)
                self._writing = True
            return
        if self._writing:
            self._loop.remove_writer(self._fd)
            self._writing = False
        if self._close_after:
            self.close()

    def _on_writable(self) -> None:
        self._flush()
        if not self._closed and not self._out:
            self._process()


class HttpServer:
    """Serve ``handler`` on 127.0.0.1; ``port=0`` lets the OS pick a free port."""

    def __init__(self, handler: Handler, port: int = 0, host: str = "127.0.0.1") -> None:
        self.handler = handler
        self._host = host
        self._port = port
        self._sock: socket.socket | None = None
        self._loop: asyncio.AbstractEventLoop | None = None
        self.connections: set[HttpConnection] = set()

    async def start(self) -> int:
        """Listen (on the running loop) and return the port."""
        loop = asyncio.get_running_loop()
        sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        try:
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind((self._host, self._port))
            sock.listen(512)
            sock.setblocking(False)
            loop.add_reader(sock.fileno(), self._accept)
        except BaseException:
            sock.close()
            raise
        self._sock, self._loop = sock, loop
        port: int = sock.getsockname()[1]
        self._port = port
        return port

    @property
    def port(self) -> int:
        return self._port

    def _accept(self) -> None:
        sock, loop = self._sock, self._loop
        if sock is None or loop is None:
            return
        for _ in range(64):
            try:
                conn, _addr = sock.accept()
            except (BlockingIOError, InterruptedError, ConnectionAbortedError):
                return
            except OSError as exc:
                if exc.errno in (errno.EMFILE, errno.ENFILE, errno.ENOBUFS, errno.ENOMEM):
                    # out of descriptors: stop accepting for a second rather than spin on the listening socket
                    log.warning("sandbox cannot accept connections (%s); pausing for 1 s", exc.strerror)
                    loop.remove_reader(sock.fileno())
                    loop.call_later(1.0, self._resume_accepting)
                return
            HttpConnection(self, loop, conn)

    def _resume_accepting(self) -> None:
        if self._sock is not None and self._loop is not None:
            self._loop.add_reader(self._sock.fileno(), self._accept)

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        sock, loop = self._sock, self._loop
        self._sock = None
        if sock is not None and loop is not None:
            loop.remove_reader(sock.fileno())
            sock.close()
        for conn in list(self.connections):
            conn.close()
