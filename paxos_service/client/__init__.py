"""The Python client stub for other services.

    from paxos_service.client import KvClient, PaxosClient

Errors are :class:`PaxosError` subclasses, never raw gRPC errors. The asyncio
clients are the implementation; the blocking ones run them on a private
event-loop thread.
"""

from paxos_service.client.kv import AsyncKvClient, KvClient
from paxos_service.client.paxos import AsyncPaxosClient, PaxosClient
from paxos_service.client.results import (
    CasResult,
    DeleteResult,
    GetResult,
    KeyValue,
    Outcome,
    ProposeResult,
    PutResult,
    WatchEvent,
)
from paxos_service.client.watch import AsyncWatch, Watch
from paxos_service.core.config import TlsFiles
from paxos_service.core.errors import (
    AuthenticationError,
    CompactedError,
    DeadlineExceededError,
    InvalidArgumentError,
    NotLeaderError,
    OutcomeUnknownError,
    PaxosError,
    UnavailableError,
)

__all__ = [
    "AsyncKvClient",
    "AsyncPaxosClient",
    "AsyncWatch",
    "AuthenticationError",
    "CasResult",
    "CompactedError",
    "DeadlineExceededError",
    "DeleteResult",
    "GetResult",
    "InvalidArgumentError",
    "KeyValue",
    "KvClient",
    "NotLeaderError",
    "Outcome",
    "OutcomeUnknownError",
    "PaxosClient",
    "PaxosError",
    "ProposeResult",
    "PutResult",
    "TlsFiles",
    "UnavailableError",
    "Watch",
    "WatchEvent",
]
