"""A minimal HTTP/1.1 keep-alive client on asyncio streams, for etcd's JSON gateway.

It does what the benchmark needs and no more: POST a body, read one response
(``Content-Length`` or chunked), keep the connection for the next request.
One connection serves one request at a time, as HTTP/1.1 without pipelining
does; a load generator gives each of its tasks a connection of its own.
"""

from __future__ import annotations

import asyncio
import contextlib


class HttpError(Exception):
    """The connection failed or the response could not be read."""


class HttpConnection:
    def __init__(self, host: str, port: int) -> None:
        self.host = host
        self.port = port
        self._reader: asyncio.StreamReader | None = None
        self._writer: asyncio.StreamWriter | None = None

    async def post(self, path: str, body: bytes) -> tuple[int, bytes]:
        """Send ``POST path`` with a JSON body; return the status and the body.

        Any failure closes the connection (a half-read response would poison
        the next request) and raises :class:`HttpError`; the next call
        connects again."""
        try:
            if self._writer is None:
                self._reader, self._writer = await asyncio.open_connection(self.host, self.port)
            assert self._reader is not None
            head = (
                f"POST {path} HTTP/1.1\r\n"
                f"Host: {self.host}:{self.port}\r\n"
                "Content-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\n"
                "\r\n"
            ).encode("ascii")
            self._writer.write(head + body)
            await self._writer.drain()
            status, keep_alive, payload = await _read_response(self._reader)
        except (OSError, asyncio.IncompleteReadError, ValueError, HttpError) as exc:
            self.close()
            raise HttpError(f"{self.host}:{self.port}{path}: {exc or type(exc).__name__}") from None
        except BaseException:
            # Cancelled (a timeout) in the middle of an exchange: the stream
            # is in an unknown state, so it cannot be reused.
            self.close()
            raise
        if not keep_alive:
            self.close()
        return status, payload

    def close(self) -> None:
        writer, self._reader, self._writer = self._writer, None, None
        if writer is not None:
            with contextlib.suppress(Exception):
                writer.close()


async def _read_response(reader: asyncio.StreamReader) -> tuple[int, bool, bytes]:
    status_line = await reader.readline()
    if not status_line:
        raise HttpError("connection closed before a response")
    parts = status_line.split(None, 2)
    if len(parts) < 2 or not parts[0].startswith(b"HTTP/1."):
        raise HttpError(f"bad status line {status_line[:80]!r}")
    status = int(parts[1])
    keep_alive = parts[0] != b"HTTP/1.0"
    length: int | None = None
    chunked = False
    while True:
        line = await reader.readline()
        if not line:
            raise HttpError("connection closed inside the headers")
        if line in (b"\r\n", b"\n"):
            break
        name, _, value = line.partition(b":")
        name, value = name.strip().lower(), value.strip().lower()
        if name == b"content-length":
            length = int(value)
        elif name == b"transfer-encoding" and b"chunked" in value:
            chunked = True
        elif name == b"connection":
            keep_alive = value == b"keep-alive" or (keep_alive and value != b"close")
    if chunked:
        body = await _read_chunked(reader)
    elif length is not None:
        body = await reader.readexactly(length)
    else:
        body = await reader.read()  # delimited by the end of the connection
        keep_alive = False
    return status, keep_alive, body


async def _read_chunked(reader: asyncio.StreamReader) -> bytes:
    pieces: list[bytes] = []
    while True:
        size_line = await reader.readline()
        if not size_line:
            raise HttpError("connection closed inside a chunked body")
        size = int(size_line.split(b";", 1)[0].strip(), 16)
        if size == 0:
            # Trailers, if any, end with an empty line.
            while (await reader.readline()) not in (b"\r\n", b"\n", b""):
                pass
            return b"".join(pieces)
        pieces.append(await reader.readexactly(size))
        await reader.readexactly(2)  # CRLF after each chunk
