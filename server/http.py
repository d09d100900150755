"""A small HTTP/1.1 layer over asyncio streams: requests in, JSON or SSE responses out.

Enough for the SDKs (httpx) and agents that talk to this server: keep-alive, Content-Length
bodies, chunked streaming. Bad input is answered, never raised into the server: a malformed
request line or header is a 400, a body over `max_body` a 413, and the connection closes.
"""

from __future__ import annotations

import asyncio
import json
import logging
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

log = logging.getLogger(__name__)

REASONS = {200: "OK", 400: "Bad Request", 401: "Unauthorized", 404: "Not Found",
           405: "Method Not Allowed", 409: "Conflict", 413: "Payload Too Large",
           429: "Too Many Requests",
           500: "Internal Server Error", 503: "Service Unavailable"}
MAX_HEADER_BYTES = 64 << 10


class HttpError(Exception):
    """An answer other than 200, with the message the client sees."""

    def __init__(self, status: int, message: str, headers: dict[str, str] | None = None,
                 kind: str = "invalid_request_error"):
        super().__init__(message)
        self.status, self.message, self.kind = status, message, kind
        self.headers = headers or {}


@dataclass
class Request:
    """One parsed request."""

    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""
    query: str = ""

    def json(self) -> dict[str, Any]:
        """The body as a JSON object, or a 400 that says what is wrong."""
        try:
            value = json.loads(self.body or b"null")
        except (ValueError, UnicodeDecodeError) as e:
            raise HttpError(400, f"the body is not valid JSON ({e})") from e
        if not isinstance(value, dict):
            raise HttpError(400, "the body must be a JSON object")
        return value


@dataclass
class Response:
    """A whole response (JSON or text)."""

    status: int = 200
    body: bytes = b""
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    @classmethod
    def of_json(cls, value: Any, status: int = 200, headers: dict[str, str] | None = None
                ) -> Response:
        return cls(status, json.dumps(value).encode(), headers=headers or {})


class Stream:
    """A streamed response: chunked transfer of server-sent events."""

    def __init__(self, writer: asyncio.StreamWriter):
        self._writer = writer
        self.started = False

    async def start(self, content_type: str = "text/event-stream") -> None:
        head = (f"HTTP/1.1 200 OK\r\nContent-Type: {content_type}\r\n"
                "Cache-Control: no-cache\r\nTransfer-Encoding: chunked\r\n\r\n")
        self._writer.write(head.encode())
        self.started = True
        await self._writer.drain()

    async def send(self, data: str, event: str | None = None) -> None:
        """One SSE event; raises ConnectionError when the client went away."""
        text = (f"event: {event}\n" if event else "") + f"data: {data}\n\n"
        await self._chunk(text.encode())

    async def end(self) -> None:
        await self._chunk(b"")

    async def _chunk(self, payload: bytes) -> None:
        if self._writer.is_closing():
            raise ConnectionResetError("the client closed the connection")
        self._writer.write(f"{len(payload):x}\r\n".encode() + payload + b"\r\n")
        await self._writer.drain()


Handler = Callable[[Request, Stream], Awaitable[Response | None]]


class HttpServer:
    """Serves `handler` on TCP and/or a Unix socket. The handler returns a Response, or
    None after streaming through the Stream it was given."""

    def __init__(self, handler: Handler, max_body: int = 32 << 20, idle_s: float = 300.0):
        self.handler = handler
        self.max_body = max_body
        self.idle_s = idle_s
        self.servers: list[asyncio.AbstractServer] = []
        self._open: set[asyncio.StreamWriter] = set()

    async def listen_tcp(self, host: str, port: int) -> int:
        server = await asyncio.start_server(self._serve, host, port, limit=MAX_HEADER_BYTES)
        self.servers.append(server)
        return server.sockets[0].getsockname()[1]

    async def listen_unix(self, path: str) -> None:
        server = await asyncio.start_unix_server(self._serve, path, limit=MAX_HEADER_BYTES)
        self.servers.append(server)

    def stop_listening(self) -> None:
        for s in self.servers:
            s.close()

    async def close(self) -> None:
        """Stop listening and close every connection still open."""
        self.stop_listening()
        for writer in list(self._open):
            writer.close()
        for s in self.servers:
            await s.wait_closed()

    async def _serve(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._open.add(writer)
        try:
            while await self._one(reader, writer):
                pass
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError):
            pass
        except Exception:  # never let one connection take the server down
            log.exception("connection failed")
        finally:
            self._open.discard(writer)
            writer.close()

    async def _one(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> bool:
        """Serve one request; False when the connection should close."""
        stream = Stream(writer)
        try:
            req = await self._read(reader)
            if req is None:
                return False
            resp = await self.handler(req, stream)
        except HttpError as e:
            if stream.started:
                return False
            await _write(writer, error_response(e), keep_alive=False)
            return False
        except (ConnectionError, asyncio.IncompleteReadError):
            raise
        except Exception as e:  # a bug: the client gets a 500 with the cause, the server stays
            log.exception("request failed")
            if not stream.started:
                failed = HttpError(500, f"internal error: {e}", kind="api_error")
                await _write(writer, error_response(failed), keep_alive=False)
            return False
        if resp is None:  # streamed
            return True
        keep = req.headers.get("connection", "").lower() != "close"
        await _write(writer, resp, keep)
        return keep

    async def _read(self, reader: asyncio.StreamReader) -> Request | None:
        try:
            head = await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), self.idle_s)
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise HttpError(400, "the request ended inside its headers") from e
            return None
        except asyncio.LimitOverrunError as e:
            raise HttpError(413, "the request headers are too large") from e
        req = parse_head(head)
        if req.headers.get("transfer-encoding", "").lower() == "chunked":
            raise HttpError(400, "chunked request bodies are not supported; send Content-Length")
        try:
            length = int(req.headers.get("content-length", "0"))
        except ValueError as e:
            raise HttpError(400, "Content-Length is not a number") from e
        if length < 0 or length > self.max_body:
            raise HttpError(413, f"the body is {length:,} bytes; at most {self.max_body:,}")
        req.body = await asyncio.wait_for(reader.readexactly(length), self.idle_s)
        return req


def parse_head(head: bytes) -> Request:
    """The request line and headers, or a 400."""
    try:
        lines = head.decode("latin-1").split("\r\n")
        method, target, version = lines[0].split(" ")
    except ValueError as e:
        raise HttpError(400, "malformed request line") from e
    if not version.startswith("HTTP/1."):
        raise HttpError(400, f"unsupported protocol {version!r}")
    headers = {}
    for line in lines[1:]:
        if not line:
            continue
        name, sep, value = line.partition(":")
        if not sep or not name.strip():
            raise HttpError(400, f"malformed header line {line[:60]!r}")
        headers[name.strip().lower()] = value.strip()
    path, _, query = target.partition("?")
    return Request(method.upper(), path, headers, query=query)


def error_response(e: HttpError) -> Response:
    """An error in the shape both OpenAI and Anthropic clients read (`error.message`)."""
    body = {"type": "error", "error": {"type": e.kind, "message": e.message}}
    return Response.of_json(body, e.status, e.headers)


async def _write(writer: asyncio.StreamWriter, resp: Response, keep_alive: bool) -> None:
    head = [f"HTTP/1.1 {resp.status} {REASONS.get(resp.status, 'Error')}",
            f"Content-Type: {resp.content_type}", f"Content-Length: {len(resp.body)}",
            f"Connection: {'keep-alive' if keep_alive else 'close'}"]
    head += [f"{k}: {v}" for k, v in resp.headers.items()]
    writer.write(("\r\n".join(head) + "\r\n\r\n").encode() + resp.body)
    await writer.drain()
