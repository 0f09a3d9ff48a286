"""The ``grpc.aio.ServicerContext`` a handler receives: status, metadata,
deadline and the response stream of one server call, as grpc.aio's."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Iterable
from typing import TYPE_CHECKING, Any

import grpc
import grpc.aio
from grpc._cython import cygrpc  # type: ignore[attr-defined]

from tests.simulation.realsim.net.wire import MetadataPairs, validate_metadata

if TYPE_CHECKING:
    from tests.simulation.realsim.net.server_call import ServerCall


class SimContext(grpc.aio.ServicerContext[Any, Any]):
    """What a handler receives as ``context``; behaves as grpc.aio's.

    ``abort`` sends the status at once and raises ``grpc.aio.AbortError``; if
    the handler swallows it, the status already sent stands (as in grpc) and
    the swallowing is recorded in :attr:`SimNetwork.suppressed_aborts`.
    """

    def __init__(self, call: ServerCall) -> None:
        self._call = call
        self._code: grpc.StatusCode | None = None
        self._details: str | None = None
        self._trailing: MetadataPairs = ()
        self._initial: MetadataPairs | None = None
        self._abort_exception: grpc.aio.AbortError | None = None
        self._cancelled = False
        self._done = False
        self._done_callbacks: list[Callable[[Any], None]] = []

    # status

    async def abort(
        self,
        code: grpc.StatusCode,
        details: str = "",
        trailing_metadata: Any = (),
    ) -> Any:
        if self._abort_exception is not None:
            raise grpc.aio.UsageError("Abort already called!")
        self._abort_exception = grpc.aio.AbortError("Locally aborted.")
        trailing = validate_metadata(trailing_metadata)
        if not trailing and self._trailing:
            trailing = self._trailing
        self._trailing = trailing
        if details == "" and self._details:
            details = self._details
        self._details = details
        self._code = code
        self._call.send_status(code, details)
        raise self._abort_exception

    async def abort_with_status(self, status: Any) -> Any:
        await self.abort(status.code, status.details, status.trailing_metadata)

    def set_code(self, code: Any) -> None:
        self._code = code

    def code(self) -> Any:
        return self._code

    def set_details(self, details: str) -> None:
        self._details = details

    def details(self) -> str | None:  # type: ignore[override]
        return self._details

    def set_trailing_metadata(self, trailing_metadata: Any) -> None:
        self._trailing = validate_metadata(trailing_metadata)

    def trailing_metadata(self) -> Any:
        return self._trailing

    async def send_initial_metadata(self, initial_metadata: Any) -> None:
        if self._initial is not None:
            raise grpc.aio.UsageError("Send initial metadata failed: already sent")
        self._initial = validate_metadata(initial_metadata)

    # the call

    def invocation_metadata(self) -> Any:
        return tuple(cygrpc._Metadatum(key, value) for key, value in self._call.rpc.metadata)

    def time_remaining(self) -> float | None:  # type: ignore[override]
        deadline = self._call.deadline
        if deadline is None:
            return None
        return max(deadline - asyncio.get_running_loop().time(), 0.0)

    def peer(self) -> str:
        return f"sim:{self._call.rpc.src}"

    def peer_identities(self) -> Iterable[bytes] | None:
        return None

    def peer_identity_key(self) -> str | None:
        return None

    def auth_context(self) -> Any:
        return {}

    def cancelled(self) -> bool:
        return self._cancelled

    def done(self) -> bool:
        return self._done

    def add_done_callback(self, callback: Any) -> None:
        if self._done:
            callback(self)
        else:
            self._done_callbacks.append(callback)

    def _finish(self, cancelled: bool) -> None:
        if self._done:
            return
        self._done = True
        self._cancelled = cancelled
        callbacks, self._done_callbacks = self._done_callbacks, []
        for callback in callbacks:
            callback(self)

    # streams

    async def read(self) -> Any:
        raise grpc.aio.UsageError("read() on a call without a request stream")

    async def write(self, message: Any) -> None:
        if not self._call.rpc.streaming:
            raise grpc.aio.UsageError("write() on a call without a response stream")
        if self._call.status_sent:
            raise grpc.aio.UsageError("write() after the status was sent")
        self._call.send_message(message)
        await asyncio.sleep(0)

    # compression (nothing to compress in memory)

    def set_compression(self, compression: Any) -> None:
        pass

    def disable_next_message_compression(self) -> None:
        pass
