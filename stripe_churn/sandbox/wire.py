"""A small asyncio HTTP/1.1 server: keep-alive, Content-Length bodies, and full control of the socket.

The sandbox needs what ordinary frameworks hide: answering after a delay without blocking other
connections, dropping or resetting a connection without a response, and sending half a body. The
application is a plain callable ``handle(Request) -> Response``; this module only speaks the protocol.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import socket
import struct
from collections.abc import Callable
from dataclasses import dataclass, field
from http import HTTPStatus
from typing import Literal
from urllib.parse import parse_qsl, unquote

log = logging.getLogger(__name__)

MAX_HEAD = 64 * 1024
MAX_BODY = 1024 * 1024

Action = Literal["drop", "reset", "truncate"]

_REASONS = {s.value: s.phrase for s in HTTPStatus}


@dataclass(slots=True)
class Request:
    """One parsed request: method, decoded path, raw query string, lower-cased headers and body."""

    method: str
    path: str
    query: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass(slots=True)
class Response:
    """What the application answers; ``delay`` and ``action`` let it simulate latency and broken peers."""

    status: int
    body: bytes
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
    for key, value in parse_qsl(query, keep_blank_values=True):
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


class HttpProtocol(asyncio.Protocol):
    """One connection: parse requests in order, answer each, keep the connection open when allowed."""

    def __init__(self, handler: Handler, connections: set[HttpProtocol]) -> None:
        self._handler = handler
        self._connections = connections
        self._buf = bytearray()
        self._transport: asyncio.Transport | None = None
        self._busy = False
        self._paused = False
        self._task: asyncio.Task[None] | None = None

    # asyncio callbacks -------------------------------------------------------------------------
    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        assert isinstance(transport, asyncio.Transport)
        self._transport = transport
        sock = transport.get_extra_info("socket")
        if sock is not None:
            with contextlib.suppress(OSError):  # not a TCP socket
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._connections.add(self)

    def connection_lost(self, exc: Exception | None) -> None:
        self._connections.discard(self)
        self._transport = None
        if self._task is not None and not self._task.done():
            self._task.cancel()

    def data_received(self, data: bytes) -> None:
        self._buf += data
        if not self._busy:
            self._process()

    def pause_writing(self) -> None:
        """The peer is not reading: stop answering (and so stop buffering) until it catches up."""
        self._paused = True

    def resume_writing(self) -> None:
        self._paused = False
        if not self._busy and self._buf:
            self._process()

    # internals ---------------------------------------------------------------------------------
    def close(self) -> None:
        """Close the connection now (server shutdown)."""
        if self._transport is not None:
            self._transport.close()

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
        return Request(method.upper(), unquote(path), query, headers, body), keep_alive

    def _fail(self, status: int, message: str) -> None:
        body = json.dumps({"error": {"type": "invalid_request_error", "message": message}}).encode()
        self._send(Response(status, body), keep_alive=False)

    def _process(self) -> None:
        while self._transport is not None and not self._busy and not self._paused:
            parsed = self._parse_one()
            if parsed is None:
                return
            req, keep_alive = parsed
            try:
                resp = self._handler(req)
            except Exception:
                log.exception("sandbox handler failed on %s %s", req.method, req.path)
                resp = Response(500, b'{"error":{"type":"api_error","message":"Internal sandbox error."}}')
            if resp.delay > 0:
                self._busy = True
                self._task = asyncio.get_running_loop().create_task(self._send_later(resp, keep_alive))
                return
            self._send(resp, keep_alive)

    async def _send_later(self, resp: Response, keep_alive: bool) -> None:
        await asyncio.sleep(resp.delay)
        self._busy = False
        self._send(resp, keep_alive)
        if self._buf and not self._paused:
            self._process()

    def _send(self, resp: Response, keep_alive: bool) -> None:
        transport = self._transport
        if transport is None:
            return
        keep_alive = keep_alive and not resp.close
        if resp.action == "drop":
            transport.close()
            return
        if resp.action == "reset":
            sock = transport.get_extra_info("socket")
            if sock is not None:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            transport.abort()
            return
        body = resp.body
        if resp.action == "truncate":
            transport.write(_head(resp, len(body), False) + body[: len(body) // 2])
            transport.close()
            return
        transport.write(_head(resp, len(body), keep_alive) + body)
        if not keep_alive:
            transport.close()


class HttpServer:
    """Serve ``handler`` on 127.0.0.1; ``port=0`` lets the OS pick a free port."""

    def __init__(self, handler: Handler, port: int = 0, host: str = "127.0.0.1") -> None:
        self._handler = handler
        self._host = host
        self._port = port
        self._server: asyncio.Server | None = None
        self._connections: set[HttpProtocol] = set()

    async def start(self) -> int:
        loop = asyncio.get_running_loop()
        self._server = await loop.create_server(
            lambda: HttpProtocol(self._handler, self._connections),
            self._host, self._port, reuse_address=True, backlog=512,
        )
        port: int = self._server.sockets[0].getsockname()[1]
        self._port = port
        return port

    @property
    def port(self) -> int:
        return self._port

    async def close(self) -> None:
        """Stop listening and close every open connection."""
        if self._server is not None:
            self._server.close()
        for conn in list(self._connections):
            conn.close()
        if self._server is not None:
            await self._server.wait_closed()
            self._server = None
