"""What a client call may ask, checked before anything is sent, and the
request ids that make a key-value retry safe.

The client checks only what its own API could get wrong (types, the shape of
a compare-and-swap, ranges of numbers). What a key may be (non-empty, at most
N bytes) is the server's rule, checked there once, so the two can never
disagree.
"""

from __future__ import annotations

import itertools
import secrets
import threading

from paxos_service.core.errors import InvalidArgumentError
from paxos_service.v1 import paxos_pb2 as pb

#: Every call's deadline unless the client or the call says otherwise.
DEFAULT_TIMEOUT = 5.0
MAX_UINT32 = (1 << 32) - 1
MAX_UINT64 = (1 << 64) - 1


def check_instance(instance: int, value: bytes | None = None) -> None:
    """A single-decree call's instance (and value, for a proposal)."""
    if not isinstance(instance, int) or instance < 1:
        raise InvalidArgumentError(f"instance must be an integer >= 1, got {instance!r}")
    if value is not None and not isinstance(value, bytes):
        raise InvalidArgumentError(f"value must be bytes, got {type(value).__name__}")


def check_key(key: object, what: str = "key") -> str:
    if not isinstance(key, str):
        raise InvalidArgumentError(f"{what} must be a str, got {type(key).__name__}")
    try:
        key.encode()
    except UnicodeEncodeError:
        raise InvalidArgumentError(f"{what} {key!r} is not valid Unicode text") from None
    return key


def check_value(value: object, limit: int, what: str = "value") -> bytes:
    if not isinstance(value, bytes):
        raise InvalidArgumentError(f"{what} must be bytes, got {type(value).__name__}")
    if len(value) > limit:
        # The channel could not even send it (gRPC's own error would say
        # RESOURCE_EXHAUSTED about a message, not about the value).
        raise InvalidArgumentError(
            f"{what} is {len(value)} bytes, more than this client's max_value_bytes ({limit})"
        )
    return value


def check_int(value: object, what: str, low: int, high: int) -> int:
    if not isinstance(value, int) or isinstance(value, bool) or not low <= value <= high:
        raise InvalidArgumentError(f"{what} must be an integer in {low}..{high}, got {value!r}")
    return value


def check_timeout(timeout: float | None, default: float) -> float:
    chosen = default if timeout is None else timeout
    if not chosen > 0:
        raise InvalidArgumentError(f"timeout must be > 0 seconds, got {chosen!r}")
    return chosen


def cas_request(
    key: str,
    value: bytes,
    expected_value: bytes | None,
    expected_version: int | None,
    limit: int,
) -> pb.CompareAndSwapRequest:
    if (expected_value is None) == (expected_version is None):
        raise InvalidArgumentError(
            "compare-and-swap needs exactly one of expected_value and expected_version"
        )
    request = pb.CompareAndSwapRequest(key=check_key(key), value=check_value(value, limit))
    if expected_value is not None:
        request.expected_value = check_value(expected_value, limit, "expected_value")
    else:
        request.expected_version = check_int(expected_version, "expected_version", 0, MAX_UINT64)
    return request


def watch_request(key: str, prefix: bool, start_revision: int) -> pb.WatchRequest:
    check_key(key)
    check_int(start_revision, "start_revision", 0, MAX_UINT64)
    if not key and not prefix:
        raise InvalidArgumentError("watch needs a key (or prefix=True to watch every key)")
    return pb.WatchRequest(key=key, prefix=bool(prefix), start_revision=start_revision)


def outcome_request(client_id: int, sequence: int) -> pb.GetOutcomeRequest:
    return pb.GetOutcomeRequest(
        request_id=pb.RequestId(
            client_id=check_int(client_id, "client_id", 1, MAX_UINT64),
            sequence=check_int(sequence, "sequence", 1, MAX_UINT64),
        )
    )


class RequestIds:
    """``(client_id, sequence)`` pairs for one client; safe to share between threads."""

    def __init__(self, client_id: int | None) -> None:
        if client_id is None:
            client_id = secrets.randbits(62) or 1
        self.client_id = check_int(client_id, "client_id", 1, MAX_UINT64)
        self._sequences = itertools.count(1)
        #: Sequences handed out whose answer the caller does not have yet.
        self._open: set[int] = set()
        self._lock = threading.Lock()

    def next(self) -> pb.RequestId:
        """The next id, with ``first_incomplete``: the lowest sequence still
        waiting for its answer (this one included), so the store may forget
        the results of every sequence below it."""
        with self._lock:
            sequence = next(self._sequences)
            self._open.add(sequence)
            first = min(self._open)
        return pb.RequestId(client_id=self.client_id, sequence=sequence, first_incomplete=first)

    def done(self, sequence: int) -> None:
        """``sequence`` has its answer (a result, or a sure "not applied"). One
        whose outcome is unknown stays open: its result must stay readable
        through ``outcome()``."""
        with self._lock:
            self._open.discard(sequence)
