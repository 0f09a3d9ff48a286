"""The metrics interceptor on a real grpc.aio server in this process: every
kind of handler, every way an RPC can end, counted with the code the client
saw. A probe service with raw-bytes messages needs no protos, so each test
controls exactly what its handler does.

Metrics are process-wide, so every assertion is on the change a test made.
"""

from __future__ import annotations

import asyncio
import importlib.util
import socket
import urllib.request
from collections.abc import AsyncIterator, Iterator
from typing import Any

import grpc
import pytest
from prometheus_client import REGISTRY
from prometheus_client.parser import text_string_to_metric_families

from paxos_service.core import metrics
from paxos_service.transport.errors import BindError
from paxos_service.transport.instrumentation import server_interceptors
from paxos_service.transport.metrics_http import serve_http
from tests.support.processes import free_port

SERVICE = "metrics_test.v1.Probe"


class Probe:
    """Handlers of every shape grpc.aio supports asynchronously."""

    def __init__(self) -> None:
        #: Set when a handler began, and when its own cleanup ran.
        self.entered = asyncio.Event()
        self.finished = asyncio.Event()
        self.never = asyncio.Event()

    async def unary(self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]) -> bytes:
        self.entered.set()
        try:
            if request == b"abort":
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "bad")
            if request == b"boom":
                raise ValueError("boom")
            if request == b"set-code":
                context.set_code(grpc.StatusCode.NOT_FOUND)
                return b""
            if request == b"hang":
                await self.never.wait()
            return request
        finally:
            self.finished.set()

    async def stream_gen(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        try:
            for i in range(3):
                yield b"%d" % i
            if request == b"abort":
                await context.abort(grpc.StatusCode.RESOURCE_EXHAUSTED, "too slow")
            if request == b"hang":
                await self.never.wait()
        finally:
            self.finished.set()

    async def stream_writer(
        self, request: bytes, context: grpc.aio.ServicerContext[Any, Any]
    ) -> None:
        for _ in range(int(request)):
            await context.write(b"x")

    async def client_stream(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> bytes:
        count = 0
        async for _ in requests:
            count += 1
        return b"%d" % count

    async def bidi(
        self, requests: AsyncIterator[bytes], context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[bytes]:
        async for request in requests:
            yield request


def _handlers(probe: Probe) -> grpc.GenericRpcHandler[Any, Any]:
    return grpc.method_handlers_generic_handler(
        SERVICE,
        {
            "Unary": grpc.unary_unary_rpc_method_handler(probe.unary),
            "StreamGen": grpc.unary_stream_rpc_method_handler(probe.stream_gen),
            "StreamWriter": grpc.unary_stream_rpc_method_handler(probe.stream_writer),
            "ClientStream": grpc.stream_unary_rpc_method_handler(probe.client_stream),
            "Bidi": grpc.stream_stream_rpc_method_handler(probe.bidi),
        },
    )


def sample(name: str, grpc_type: str, method: str, code: str | None = None) -> float:
    labels = {"grpc_type": grpc_type, "grpc_service": SERVICE, "grpc_method": method}
    if code is not None:
        labels["grpc_code"] = code
    return REGISTRY.get_sample_value(name, labels) or 0.0


class Counts:
    """Every grpc_server_* value of one method, to compare before and after."""

    def __init__(self, grpc_type: str, method: str) -> None:
        self.grpc_type, self.method = grpc_type, method
        self.before = self._read()

    def _read(self) -> dict[str, float]:
        values = {
            name: sample(name, self.grpc_type, self.method)
            for name in (
                "grpc_server_started_total",
                "grpc_server_msg_received_total",
                "grpc_server_msg_sent_total",
                "grpc_server_handling_seconds_count",
            )
        }
        for code in metrics.GRPC_CODE_NAMES.values():
            values[code] = sample("grpc_server_handled_total", self.grpc_type, self.method, code)
        return values

    def delta(self) -> dict[str, float]:
        """What changed since construction (zeros left out)."""
        after = self._read()
        return {k: after[k] - self.before[k] for k in after if after[k] != self.before[k]}


def expect(started: int, code: str, received: int, sent: int) -> dict[str, float]:
    return {
        "grpc_server_started_total": started,
        "grpc_server_handling_seconds_count": started,
        code: started,
        **({"grpc_server_msg_received_total": received} if received else {}),
        **({"grpc_server_msg_sent_total": sent} if sent else {}),
    }


@pytest.fixture
async def probe_server() -> AsyncIterator[tuple[Probe, grpc.aio.Channel]]:
    probe = Probe()
    server = grpc.aio.server(interceptors=server_interceptors())
    server.add_generic_rpc_handlers((_handlers(probe),))
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    channel = grpc.aio.insecure_channel(f"127.0.0.1:{port}")
    try:
        yield probe, channel
    finally:
        await channel.close()
        await server.stop(None)


def call(channel: grpc.aio.Channel, kind: str, method: str) -> Any:
    factory = {
        "unary": channel.unary_unary,
        "server_stream": channel.unary_stream,
        "client_stream": channel.stream_unary,
        "bidi_stream": channel.stream_stream,
    }[kind]
    return factory(f"/{SERVICE}/{method}")


async def test_unary_outcomes_are_counted_with_the_code_the_client_got(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    _, channel = probe_server
    counts = Counts("unary", "Unary")
    unary = call(channel, "unary", "Unary")
    for _ in range(3):
        assert await unary(b"hi") == b"hi"
    seen = []
    for request in (b"abort", b"abort", b"boom", b"set-code"):
        with pytest.raises(grpc.aio.AioRpcError) as info:
            await unary(request)
        seen.append(info.value.code())
    assert seen == [
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.INVALID_ARGUMENT,
        grpc.StatusCode.UNKNOWN,
        grpc.StatusCode.NOT_FOUND,
    ]
    assert counts.delta() == {
        "grpc_server_started_total": 7,
        "grpc_server_handling_seconds_count": 7,
        "grpc_server_msg_received_total": 7,
        "grpc_server_msg_sent_total": 3,  # only the OK ones sent a message
        "OK": 3,
        "InvalidArgument": 2,
        "Unknown": 1,
        "NotFound": 1,
    }


async def test_a_cancelled_call_counts_as_canceled(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    probe, channel = probe_server
    counts = Counts("unary", "Unary")
    pending = call(channel, "unary", "Unary")(b"hang")
    await asyncio.wait_for(probe.entered.wait(), 10)
    pending.cancel()
    await asyncio.wait_for(probe.finished.wait(), 10)  # its cleanup ran: it is counted
    assert counts.delta() == expect(1, "Canceled", received=1, sent=0)


async def test_a_call_past_its_deadline_counts_as_deadline_exceeded(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    probe, channel = probe_server
    counts = Counts("unary", "Unary")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await call(channel, "unary", "Unary")(b"hang", timeout=0.2)
    assert info.value.code() == grpc.StatusCode.DEADLINE_EXCEEDED
    await asyncio.wait_for(probe.finished.wait(), 10)
    assert counts.delta() == expect(1, "DeadlineExceeded", received=1, sent=0)


async def test_server_streams_count_every_message(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    _, channel = probe_server
    gen = Counts("server_stream", "StreamGen")
    assert [m async for m in call(channel, "server_stream", "StreamGen")(b"")] == [
        b"0",
        b"1",
        b"2",
    ]
    assert gen.delta() == expect(1, "OK", received=1, sent=3)

    gen = Counts("server_stream", "StreamGen")
    stream = call(channel, "server_stream", "StreamGen")(b"abort")
    with pytest.raises(grpc.aio.AioRpcError) as info:
        async for _ in stream:
            pass
    assert info.value.code() == grpc.StatusCode.RESOURCE_EXHAUSTED
    assert gen.delta() == expect(1, "ResourceExhausted", received=1, sent=3)

    # The reader/writer style (context.write), as grpc.health's Watch uses.
    writer = Counts("server_stream", "StreamWriter")
    assert len([m async for m in call(channel, "server_stream", "StreamWriter")(b"4")]) == 4
    assert writer.delta() == expect(1, "OK", received=1, sent=4)


async def test_a_cancelled_stream_counts_as_canceled_and_runs_its_cleanup(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    probe, channel = probe_server
    counts = Counts("server_stream", "StreamGen")
    stream = call(channel, "server_stream", "StreamGen")(b"hang")
    received = [await stream.read() for _ in range(3)]
    assert received == [b"0", b"1", b"2"]
    stream.cancel()
    await asyncio.wait_for(probe.finished.wait(), 10)
    assert counts.delta() == expect(1, "Canceled", received=1, sent=3)


async def test_client_and_bidi_streams_count_messages_both_ways(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    _, channel = probe_server
    client = Counts("client_stream", "ClientStream")
    assert await call(channel, "client_stream", "ClientStream")(iter([b"a", b"b", b"c"])) == b"3"
    assert client.delta() == expect(1, "OK", received=3, sent=1)

    bidi = Counts("bidi_stream", "Bidi")
    replies = [m async for m in call(channel, "bidi_stream", "Bidi")(iter([b"a", b"b"]))]
    assert replies == [b"a", b"b"]
    assert bidi.delta() == expect(1, "OK", received=2, sent=2)


async def test_unknown_methods_are_not_counted(
    probe_server: tuple[Probe, grpc.aio.Channel],
) -> None:
    """Their names come from clients: counting them would let anyone grow the
    label set without bound."""
    _, channel = probe_server
    with pytest.raises(grpc.aio.AioRpcError) as info:
        await channel.unary_unary(f"/{SERVICE}/NoSuchMethod")(b"")
    assert info.value.code() == grpc.StatusCode.UNIMPLEMENTED
    assert (
        REGISTRY.get_sample_value(
            "grpc_server_started_total",
            {"grpc_type": "unary", "grpc_service": SERVICE, "grpc_method": "NoSuchMethod"},
        )
        is None
    )


# /metrics over HTTP -----------------------------------------------------------------


@pytest.fixture
def metrics_http() -> Iterator[str]:
    address = f"127.0.0.1:{free_port()}"
    httpd = serve_http(address)
    try:
        yield address
    finally:
        httpd.shutdown()
        httpd.server_close()


def test_serve_http_exposes_the_registry_in_the_text_format(metrics_http: str) -> None:
    with urllib.request.urlopen(f"http://{metrics_http}/metrics", timeout=10) as response:
        text = response.read().decode()
    families = {f.name: f for f in text_string_to_metric_families(text)}
    for name, kind in {
        "grpc_server_handled": "counter",
        "grpc_server_handling_seconds": "histogram",
        "paxos_acceptor_commit_seconds": "histogram",
        "paxos_learner_lag_instances": "gauge",
        "paxos_leader_current_id": "gauge",
    }.items():
        assert families[name].type == kind, name
        assert families[name].documentation, f"{name} has no help text"
    assert not any(name.endswith("_created") for name in families)


def test_a_busy_metrics_port_is_a_bind_error(metrics_http: str) -> None:
    with socket.socket() as busy:
        busy.bind(("127.0.0.1", 0))
        busy.listen()
        address = f"127.0.0.1:{busy.getsockname()[1]}"
        with pytest.raises(BindError, match=f"cannot serve metrics on {address}"):
            serve_http(address)
    with pytest.raises(BindError):  # the one the fixture serves on, too
        serve_http(metrics_http)


def test_importing_the_module_again_reuses_the_registered_metrics() -> None:
    """A second copy (reloaded, or imported under another name) must not fail
    with "Duplicated timeseries": it shares what the first registered."""
    spec = importlib.util.spec_from_file_location("paxos_metrics_copy", metrics.__file__)
    assert spec is not None and spec.loader is not None
    copy = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(copy)
    assert copy.GRPC_HANDLED is metrics.GRPC_HANDLED
    assert copy.LEARNER_LAG is metrics.LEARNER_LAG
    assert copy.ACCEPTOR_COMMIT_SECONDS is metrics.ACCEPTOR_COMMIT_SECONDS
