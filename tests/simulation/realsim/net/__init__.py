"""An in-memory gRPC network that the real grpc.aio code uses unchanged.

Pieces, a module each:

* :mod:`.server`: :class:`SimServer`, a ``grpc.aio.Server`` the generated
  ``add_XServicer_to_server`` functions register into (health and reflection
  too), with the real server's interceptor chain.
* :mod:`.router`: :class:`SimNetwork`, addresses, which node each belongs to,
  partitions and per-message faults drawn from one injected
  ``random.Random``; it carries every message.
* :mod:`.faults`: :class:`NetFaults`, the fault model, and the records a run
  leaves (:class:`TraceEvent`, :class:`UnexpectedError`).
* :mod:`.channel`: :class:`SimChannel`, a ``grpc.aio.Channel`` for the
  generated stubs. Its calls (:mod:`.calls`) are
  ``grpc.aio.UnaryUnaryCall``/``UnaryStreamCall`` look-alikes, and errors
  reach the caller as real ``grpc.aio.AioRpcError`` with ``grpc.aio.Metadata``.
* :mod:`.context`: :class:`SimContext`, the ``grpc.aio.ServicerContext``
  handlers receive; :mod:`.server_call` runs a handler for one request.
* :mod:`.wire`: what crosses the wire (metadata, statuses, size limits).

Messages really go through the wire format: the request is serialized with
the stub's serializer and parsed with the handler's deserializer, the reply
the other way round.

Handlers run as tasks created with ``context=`` a *copy* of the context the
address was attached with (as real grpc.aio gives each RPC its own task and
context copy), so the tasks they spawn belong to that node and context
variables they set (request ids in log lines) stay with the call.
"""

from tests.simulation.realsim.net.calls import SimUnaryStreamCall, SimUnaryUnaryCall
from tests.simulation.realsim.net.channel import SimChannel
from tests.simulation.realsim.net.context import SimContext
from tests.simulation.realsim.net.faults import (
    TRANSPORT_PREFIX,
    NetFaults,
    TraceEvent,
    UnexpectedError,
)
from tests.simulation.realsim.net.router import SimNetwork
from tests.simulation.realsim.net.server import SimServer

__all__ = [
    "TRANSPORT_PREFIX",
    "NetFaults",
    "SimChannel",
    "SimContext",
    "SimNetwork",
    "SimServer",
    "SimUnaryStreamCall",
    "SimUnaryUnaryCall",
    "TraceEvent",
    "UnexpectedError",
]
