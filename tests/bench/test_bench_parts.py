"""The benchmark's pure parts and its HTTP client, without any cluster."""

from __future__ import annotations

import asyncio
import os

import pytest

from paxos_service.bench import _proc
from paxos_service.bench._args import build_parser
from paxos_service.bench._http import HttpConnection, HttpError
from paxos_service.bench._runs import _split
from paxos_service.bench._stats import percentile, ratio, summarize


def test_nearest_rank_percentiles() -> None:
    values = [float(i) for i in range(1, 101)]
    assert percentile(values, 50) == 50.0
    assert percentile(values, 99) == 99.0
    assert percentile(values, 100) == 100.0
    assert percentile([7.0], 50) == 7.0
    assert percentile([], 50) == 0.0
    with pytest.raises(ValueError):
        percentile(values, 0)


def test_summary_is_in_milliseconds() -> None:
    summary = summarize([0.003, 0.001, 0.002])
    assert summary.count == 3
    assert (summary.p50_ms, summary.max_ms) == pytest.approx((2.0, 3.0))
    assert summary.mean_ms == pytest.approx(2.0)
    assert summarize([]).count == 0
    assert ratio(2.0, 4.0) == 0.5
    assert ratio(1.0, 0.0) is None


def test_levels_split_evenly_over_workers() -> None:
    assert _split(1, 2) == [1, 0]
    assert _split(16, 2) == [8, 8]
    assert _split(7, 3) == [3, 2, 2]


def test_bad_arguments_are_refused() -> None:
    parser = build_parser()
    for argv in (["--levels", "0"], ["--levels", "a"], ["--ops", "scan"], ["--duration", "-1"]):
        with pytest.raises(SystemExit):
            parser.parse_args(argv)
    args = parser.parse_args(["--levels", "1,16,16", "--ops", "get"])
    assert args.levels == (1, 16) and args.ops == ("get",)


def test_proc_readers_see_this_process() -> None:
    assert (_proc.cpu_seconds(os.getpid()) or 0.0) >= 0.0
    assert (_proc.rss_bytes(os.getpid()) or 0) > 1024 * 1024
    assert _proc.cpu_seconds(2**22 + 12345) is None  # beyond pid_max: no such process


async def _serve(responses: list[bytes]) -> tuple[asyncio.Server, int, list[bytes]]:
    """A server that answers each request on a connection with the next canned response."""
    requests: list[bytes] = []

    async def handle(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        for response in responses:
            head = await reader.readuntil(b"\r\n\r\n")
            length = int(head.lower().split(b"content-length:")[1].split(b"\r\n")[0])
            requests.append(head + await reader.readexactly(length))
            writer.write(response)
            await writer.drain()
        writer.close()

    server = await asyncio.start_server(handle, "127.0.0.1", 0)
    port: int = server.sockets[0].getsockname()[1]
    return server, port, requests


async def test_http_client_reads_length_and_chunked_bodies_on_one_connection() -> None:
    server, port, requests = await _serve(
        [
            b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\n{}",
            b"HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n"
            b'3\r\n{"a\r\n4\r\n":1}\r\n0\r\n\r\n',
            b"HTTP/1.1 404 Not Found\r\nContent-Length: 3\r\nConnection: close\r\n\r\nnop",
        ]
    )
    connection = HttpConnection("127.0.0.1", port)
    try:
        assert await connection.post("/v3/kv/put", b'{"key":"a"}') == (200, b"{}")
        assert await connection.post("/v3/kv/range", b"{}") == (200, b'{"a":1}')
        assert await connection.post("/x", b"") == (404, b"nop")
    finally:
        connection.close()
        server.close()
        await server.wait_closed()
    assert requests[0].startswith(b"POST /v3/kv/put HTTP/1.1\r\n")
    assert requests[0].endswith(b'\r\n\r\n{"key":"a"}')
    assert len(requests) == 3  # one connection carried all three


async def test_http_client_fails_cleanly_and_reconnects() -> None:
    server, port, _ = await _serve([b"HTTP/1.1 200 OK\r\nContent-Length: 10\r\n\r\nshort"])
    connection = HttpConnection("127.0.0.1", port)
    try:
        with pytest.raises(HttpError):
            await connection.post("/v3/kv/put", b"{}")  # body cut short by the close
        server.close()
        await server.wait_closed()
        with pytest.raises(HttpError):
            await connection.post("/v3/kv/put", b"{}")  # nobody listens any more
    finally:
        connection.close()


def test_profile_summary_counts_self_and_inclusive_time() -> None:
    from paxos_service.bench._profile import summarize

    raw = "\n".join(
        [
            'process 1:"MainThread";run (asyncio/runners.py:190);'
            "apply (app/state.py:10);execute (sqlalchemy/base.py:5) 3",
            'process 1:"MainThread";run (asyncio/runners.py:190);apply (app/state.py:12) 1',
            "garbage line",
        ]
    )
    summary = summarize(raw)
    assert summary["samples"] == 4
    assert summary["self_pct"] == [["execute (base.py)", 75.0], ["apply (state.py)", 25.0]]
    # Lines of one function are merged; dispatch frames (runners.py) are left out.
    assert summary["inclusive_pct"][0] == ["apply (state.py)", 100.0]
    assert all("runners.py" not in name for name, _ in summary["inclusive_pct"])
