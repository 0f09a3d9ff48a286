"""Channels to the acceptors by id, for the identity messages (``Introduce``,
``GetRecoveryInfo``): the identity guard of a running acceptor and the
offline recovery both dial their peers this way."""

from __future__ import annotations

from collections.abc import Sequence

from paxos_service.core.config import TlsFiles
from paxos_service.transport import tls as tls_channels
from paxos_service.transport.channels import channel_options
from paxos_service.transport.peers import AcceptorPeer
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

#: Identity messages are small: default message limits.
_SMALL = 64 * 1024


def connect_peers(
    acceptors: Sequence[str],
    tls: TlsFiles | None,
    *,
    skip: int | None = None,
    only: int | None = None,
) -> list[AcceptorPeer]:
    """Channels to the acceptors at their positions (ids), but ``skip``, or
    only ``only``. Identity messages are small: default message limits."""
    peers = []
    for acceptor_id, address in enumerate(acceptors):
        if acceptor_id == skip or (only is not None and acceptor_id != only):
            continue
        channel = tls_channels.aio_channel(address, tls, channel_options(_SMALL))
        peers.append(
            AcceptorPeer(acceptor_id, address, channel, pb_grpc.AcceptorServiceStub(channel))
        )
    return peers
