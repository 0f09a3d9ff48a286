"""Outbound connections to acceptors and learners, with errors turned into
short reasons ("127.0.0.1:50052: UNAVAILABLE: connection refused") for logs and
for the status returned to clients."""

from __future__ import annotations

from dataclasses import dataclass, field

import grpc

from paxos_service.core.config import TlsFiles
from paxos_service.transport import tls
from paxos_service.transport.channels import channel_options
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc


@dataclass
class AcceptorPeer:
    """Acceptor number ``acceptor_id`` (its position in --acceptors) at ``address``."""

    acceptor_id: int
    address: str
    channel: grpc.aio.Channel
    stub: pb_grpc.AcceptorServiceAsyncStub
    last_error: str | None = field(default=None)


def connect_acceptors(
    addresses: list[str], max_value_bytes: int, tls_files: TlsFiles | None
) -> list[AcceptorPeer]:
    """Channels to the acceptors, with this node's certificate (or plaintext).
    ``tls_files`` has no default: a caller that forgot it would dial plaintext."""
    peers = []
    for acceptor_id, address in enumerate(addresses):
        channel = tls.aio_channel(address, tls_files, channel_options(max_value_bytes))
        peers.append(
            AcceptorPeer(acceptor_id, address, channel, pb_grpc.AcceptorServiceStub(channel))
        )
    return peers


def describe_rpc_error(address: str, exc: BaseException) -> str:
    if isinstance(exc, grpc.aio.AioRpcError):
        return f"{address}: {exc.code().name}: {exc.details()}"
    return f"{address}: {type(exc).__name__}: {exc}"
