"""From a failed gRPC call to a :class:`~paxos_service.core.errors.PaxosError`.

The client stubs never let a raw gRPC error out; the learner's appender reads
the same trailing metadata. One reading of a failed call serves them all.
"""

from __future__ import annotations

import grpc

from paxos_service.core.errors import (
    AuthenticationError,
    DeadlineExceededError,
    InvalidArgumentError,
    PaxosError,
    UnavailableError,
)
from paxos_service.transport import tls as tls_channels


def status_of(exc: grpc.RpcError) -> tuple[grpc.StatusCode | None, str]:
    """The code and details of a sync or asyncio gRPC error. (An asyncio
    ``AioRpcError`` is not a ``grpc.Call``, so ``isinstance(exc, grpc.Call)``
    alone would miss every asyncio error.)"""
    if isinstance(exc, grpc.aio.AioRpcError):
        return exc.code(), exc.details() or ""
    if isinstance(exc, grpc.Call):
        return exc.code(), exc.details() or ""
    return None, str(exc)


def trailing(exc: grpc.RpcError, name: str) -> str | None:
    """Trailing metadata ``name`` of a failed call, if any."""
    getter = getattr(exc, "trailing_metadata", None)
    items = getter() if callable(getter) else None
    for key, value in items or ():
        if key == name:
            return value if isinstance(value, str) else bytes(value).decode(errors="replace")
    return None


def error_for(code: grpc.StatusCode | None, details: str, address: str, *, tls: bool) -> PaxosError:
    """The typed error for a failed call to ``address``. A failed TLS
    handshake reaches us as UNAVAILABLE; it becomes :class:`AuthenticationError`
    (with TLS), or an UnavailableError with a hint (without)."""
    refusal = tls_channels.describe_refusal(code, details, tls=tls)
    if refusal is not None and tls:
        return AuthenticationError(f"{address}: {refusal}", grpc.StatusCode.UNAUTHENTICATED)
    if refusal is not None:
        return UnavailableError(f"{address}: {details} ({refusal})", code)
    if code in (grpc.StatusCode.UNAUTHENTICATED, grpc.StatusCode.PERMISSION_DENIED):
        assert code is not None
        return AuthenticationError(f"{address}: {code.name}: {details}", code)
    message = f"{address}: {details}"
    if code is grpc.StatusCode.INVALID_ARGUMENT:
        return InvalidArgumentError(message, code)
    if code is grpc.StatusCode.DEADLINE_EXCEEDED:
        return DeadlineExceededError(message, code)
    if code is grpc.StatusCode.UNAVAILABLE:
        return UnavailableError(message, code)
    name = code.name if code is not None else "UNKNOWN"
    return PaxosError(f"{address}: {name}: {details}", code)


def error_from(exc: grpc.RpcError, address: str, *, tls: bool = False) -> PaxosError:
    """:func:`error_for` a failed call's own status."""
    code, details = status_of(exc)
    return error_for(code, details, address, tls=tls)


def never_sent(details: str, markers: tuple[str, ...]) -> bool:
    """Whether UNAVAILABLE ``details`` prove that the request never left the
    caller (gRPC could not connect), as opposed to a connection lost mid-call,
    after which the server may have acted on it."""
    lowered = details.lower()
    return any(marker in lowered for marker in markers)


#: UNAVAILABLE details of a call that gRPC could not even connect for.
NOT_CONNECTED = ("failed to connect", "dns resolution failed")
