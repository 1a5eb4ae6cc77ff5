"""A small HTTP/1.1 front end on asyncio for the local server's REST API.

Connections cost a coroutine, not a thread, so clients that stall while sending headers or a body
hold no worker: they are timed out and closed. Complete requests go to a bounded pool of worker
threads (the model work); when every worker is busy and the queue is full, the answer is 503 at once.
Request framing is strict: one numeric Content-Length (no chunked bodies), bounded header and body
sizes, so no request can make the server read or allocate without limit.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import re
import threading
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from http import HTTPStatus

log = logging.getLogger(__name__)

_CONTENT_LENGTH = re.compile(r"^[0-9]{1,15}$")
_REQUEST_LINE = re.compile(r"^([A-Z]{1,16}) (\S{1,8192}) HTTP/(1\.[01])$")


@dataclass(frozen=True)
class Limits:
    """What one request and the server as a whole may use."""

    max_body_bytes: int = 32 << 20
    max_header_bytes: int = 64 << 10
    header_timeout: float = 10.0  # seconds to receive a request's line and headers
    body_rate: float = 256 << 10  # bytes/s a body must at least arrive at (plus header_timeout of grace)
    idle_timeout: float = 30.0  # a kept-alive connection with no new request is closed after this
    max_connections: int = 1024
    workers: int = 8  # threads running model work
    max_pending: int = 64  # complete requests waiting for a worker; beyond that: 503


@dataclass
class Request:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes = b""


@dataclass
class Response:
    status: int
    body: bytes | dict = field(default_factory=dict)
    content_type: str = "application/json"
    headers: dict[str, str] = field(default_factory=dict)

    def payload(self) -> bytes:
        return self.body if isinstance(self.body, bytes) else json.dumps(self.body).encode()


class HttpError(Exception):
    """A request that cannot be read; answered with `status` and the connection closed."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status


def parse_head(raw: bytes) -> tuple[str, str, dict[str, str]]:
    """(method, target, lower-cased headers) of a request head; HttpError(400/505) if malformed."""
    try:
        text = raw.decode("latin-1")
    except UnicodeDecodeError:  # pragma: no cover - latin-1 decodes every byte
        raise HttpError(HTTPStatus.BAD_REQUEST, "request head is not text") from None
    line, *lines = text.rstrip("\r\n").split("\r\n")
    match = _REQUEST_LINE.match(line)
    if not match:
        status = HTTPStatus.HTTP_VERSION_NOT_SUPPORTED if " HTTP/" in line else HTTPStatus.BAD_REQUEST
        raise HttpError(status, "malformed request line; expected METHOD /path HTTP/1.1")
    headers: dict[str, str] = {}
    for header in lines:
        name, sep, value = header.partition(":")
        if not sep or not name or name != name.strip() or len(headers) >= 100:
            raise HttpError(HTTPStatus.BAD_REQUEST, "malformed or too many request headers")
        key = name.lower()
        if key in headers and key in ("content-length", "transfer-encoding", "host"):
            raise HttpError(HTTPStatus.BAD_REQUEST, f"duplicate {name} header")
        headers[key] = value.strip()
    return match[1], match[2], headers


def body_length(headers: dict[str, str], limit: int) -> int:
    """The body size a request declares; HttpError for chunked, malformed or oversized bodies."""
    if "transfer-encoding" in headers:
        raise HttpError(HTTPStatus.NOT_IMPLEMENTED,
                        "Transfer-Encoding (chunked bodies) is not supported; send a Content-Length")
    raw = headers.get("content-length", "0")
    if not _CONTENT_LENGTH.match(raw):
        raise HttpError(HTTPStatus.BAD_REQUEST, f"Content-Length must be a non-negative integer, got {raw[:40]!r}")
    length = int(raw)
    if length > limit:
        raise HttpError(HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
                        f"request body of {length} bytes exceeds the limit of {limit}")
    return length


class HttpServer:
    """Serves `app(Request) -> Response` on host:port from a background thread (start/stop)."""

    def __init__(self, app: Callable[[Request], Response], host: str, port: int, limits: Limits = Limits()):
        self.app, self.host, self.limits = app, host, limits
        self._loop = asyncio.new_event_loop()
        self._pool = ThreadPoolExecutor(limits.workers, thread_name_prefix="tf_transfer-rest")
        self._pending = 0
        self._connections = 0
        self._tasks: set[asyncio.Task] = set()  # open connections, closed by stop()
        # The loop runs in its own thread from the start (the caller may be inside a running loop, as in
        # Jupyter); the listening socket is created there, and start() opens it to connections.
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True, name="tf_transfer-http")
        self._thread.start()
        listen = asyncio.start_server(self._connection, host, port, limit=limits.max_header_bytes,
                                      reuse_address=True, start_serving=False)
        try:
            self._server = asyncio.run_coroutine_threadsafe(listen, self._loop).result(timeout=30)
        except BaseException:
            self._loop.call_soon_threadsafe(self._loop.stop)
            raise
        self.port = self._server.sockets[0].getsockname()[1]

    def start(self) -> HttpServer:
        asyncio.run_coroutine_threadsafe(self._server.start_serving(), self._loop).result(timeout=30)
        return self

    def stop(self) -> None:
        """Stop listening, close every open connection (kept-alive ones included), stop the loop."""
        async def close():
            self._server.close()
            for task in list(self._tasks):
                task.cancel()
            await asyncio.gather(*self._tasks, return_exceptions=True)
            await self._server.wait_closed()

        if self._thread.is_alive():
            with contextlib.suppress(Exception):
                asyncio.run_coroutine_threadsafe(close(), self._loop).result(timeout=10)
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join(timeout=10)
            self._loop.close()
        self._pool.shutdown(wait=False, cancel_futures=True)

    async def _connection(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self._connections += 1
        task = asyncio.current_task()
        self._tasks.add(task)
        try:
            if self._connections > self.limits.max_connections:
                await self._send(writer, Response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "too many connections"}),
                                 close=True)
                return
            first = True
            while await self._one_request(reader, writer, first):
                first = False
        except (ConnectionError, asyncio.IncompleteReadError, TimeoutError, OSError, asyncio.CancelledError):
            pass  # the client went away or stalled (or the server stops): nothing to answer
        finally:
            self._connections -= 1
            self._tasks.discard(task)
            writer.close()
            with contextlib.suppress(Exception):
                await writer.wait_closed()

    async def _read_head(self, reader: asyncio.StreamReader, first: bool) -> bytes | None:
        timeout = self.limits.header_timeout if first else self.limits.idle_timeout
        try:
            return await asyncio.wait_for(reader.readuntil(b"\r\n\r\n"), timeout)
        except asyncio.IncompleteReadError as e:
            if e.partial.strip():
                raise
            return None  # the client closed a kept-alive connection
        except asyncio.LimitOverrunError:
            raise HttpError(HTTPStatus.REQUEST_HEADER_FIELDS_TOO_LARGE,
                            f"request headers exceed {self.limits.max_header_bytes} bytes") from None

    async def _one_request(self, reader, writer, first: bool) -> bool:
        """Read, answer and return whether the connection stays open."""
        headers: dict[str, str] = {}
        try:
            head = await self._read_head(reader, first)
            if head is None:
                return False
            method, path, headers = parse_head(head)
            length = body_length(headers, self.limits.max_body_bytes)
            deadline = self.limits.header_timeout + length / self.limits.body_rate
            body = await asyncio.wait_for(reader.readexactly(length), deadline) if length else b""
        except HttpError as e:
            if e.status == HTTPStatus.REQUEST_ENTITY_TOO_LARGE:
                await self._drain(reader, headers)
            await self._send(writer, Response(e.status, {"error": str(e)}), close=True)
            return False
        keep = headers.get("connection", "").lower() != "close"
        response = await self._dispatch(Request(method, path, headers, body))
        await self._send(writer, response, close=not keep)
        return keep

    async def _drain(self, reader: asyncio.StreamReader, headers: dict[str, str]) -> None:
        """Read and drop a moderately oversized body (up to 8x the limit, within the body deadline), so the
        client is not cut off mid-send and gets the 413; beyond that the connection is just closed."""
        length = int(headers.get("content-length", "0"))
        if length > 8 * self.limits.max_body_bytes:
            return
        deadline = asyncio.get_running_loop().time() + self.limits.header_timeout + length / self.limits.body_rate
        with contextlib.suppress(Exception):
            while length > 0:
                timeout = deadline - asyncio.get_running_loop().time()
                chunk = await asyncio.wait_for(reader.read(min(1 << 16, length)), max(timeout, 0.001))
                if not chunk:
                    break
                length -= len(chunk)

    async def _dispatch(self, request: Request) -> Response:
        if self._pending >= self.limits.max_pending + self.limits.workers:
            return Response(HTTPStatus.SERVICE_UNAVAILABLE, {"error": "server busy; retry shortly"},
                            headers={"Retry-After": "1"})
        self._pending += 1
        try:
            return await self._loop.run_in_executor(self._pool, self.app, request)
        finally:
            self._pending -= 1

    async def _send(self, writer: asyncio.StreamWriter, response: Response, close: bool) -> None:
        data = response.payload()
        status = HTTPStatus(response.status)
        lines = [f"HTTP/1.1 {status.value} {status.phrase}", f"Content-Type: {response.content_type}",
                 f"Content-Length: {len(data)}", "Server: tf_transfer-serve",
                 *(f"{k}: {v}" for k, v in response.headers.items())]
        if close:
            lines.append("Connection: close")
        writer.write(("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + data)
        await asyncio.wait_for(writer.drain(), self.limits.idle_timeout)
