"""The key-value gRPC service, served by learners.

Every write, and every read unless it asks to be stale, becomes a
:class:`Command` appended to the replicated log through the leader proposer.
Once the log entry holding it is applied here, the result computed by the
state machine is the answer. Reads through the log are linearizable for the
same reason writes are: they take a place in the one total order.

Each command carries ``(client_id, sequence)``. A retry with the same pair,
through any learner, is applied at most once; the state machine answers the
repeat from memory. Without one, the learner assigns its own.

Every answer is true. A failure ("failed", "not applied") means the command
was not applied and never will be; anything else is "outcome unknown":

* INVALID_ARGUMENT: a bad request, or a command the state machine refused
  (nothing changed, and a later copy is refused the same way).
* UNAVAILABLE: nothing was appended, so a retry is safe: no proposer would take
  the command (every attempt was refused by a proposer before appending, with
  FAILED_PRECONDITION, or could not even connect), or this learner has stopped
  applying the log (the message says why; try another learner).
* ABORTED "outcome unknown" (trailing metadata ``paxos-outcome: unknown``): the
  command may or may not be applied. A transport error once an Append may
  have reached a proposer (UNAVAILABLE after sending, DEADLINE_EXCEEDED,
  CANCELLED, a reset connection) is this, never "not appended". Retry with the
  same request id, or ask GetOutcome.
* ABORTED "outcome unknown" with ``paxos-outcome: forgotten``: the request's
  sequence is older than the client's dedup window, so the store cannot tell
  whether an earlier copy was applied, and never will: retrying cannot tell
  either. (The client raises OutcomeUnknownError at once.)

GetOutcome appends a fence for the request first (see ``kv/state_machine.py``):
if the request was applied before the fence, the answer is its result; if not,
the fence makes sure it never will be, so "not applied" is final. A forgotten
request is "outcome unknown", as above.

A watch that falls behind (its queue of live events overflowed) ends with
RESOURCE_EXHAUSTED; the message and the trailing metadata
``paxos-watch-resume-revision`` give the revision to watch again from.
"""

from __future__ import annotations

import asyncio
import secrets
from collections.abc import AsyncIterator
from typing import Any

import grpc

from paxos_service.client.requests import RequestIds
from paxos_service.core import clock, log_entry, metrics
from paxos_service.core.errors import NotLeaderError, OutcomeUnknownError
from paxos_service.core.logger import get_logger
from paxos_service.kv import MAX_SEQUENCE, Compacted, RequestState, is_forgotten
from paxos_service.node.appender import LogAppender
from paxos_service.node.replica import Replica, ReplicaFailed
from paxos_service.transport.metadata import (
    COMPACT_REVISION_METADATA,
    OUTCOME_METADATA,
    OUTCOME_UNKNOWN,
    WATCH_RESUME_METADATA,
)
from paxos_service.transport.server import bind_request
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

SERVICE_NAME = "paxos_service.v1.KvService"
#: The health name of this learner's writes that add data: NOT_SERVING while
#: it is over its space quota (reads, deletes and compaction go on).
KV_WRITES_HEALTH = "paxos_service.v1.KvService.writes"
#: The start of the UNAVAILABLE message of a learner that stopped applying.
LEARNER_FAILED = "learner cannot apply the log"
DEFAULT_TIMEOUT = 10.0
MAX_KEY_BYTES = 4096


class KvServicer(pb_grpc.KvServiceServicer):
    def __init__(self, replica: Replica, appender: LogAppender, max_value_bytes: int) -> None:
        self.replica = replica
        self.appender = appender
        self.max_command_bytes = log_entry.max_command_bytes(max_value_bytes)
        # Requests that come without a request id get this learner's own.
        self._ids = RequestIds(secrets.randbits(62) | 1)
        self._logger = get_logger()

    # Writes ---------------------------------------------------------------

    async def Put(
        self, request: pb.PutRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.PutResponse:
        await _check_key(context, request.key)
        await self._check_quota(context)
        command = self._command(
            request.request_id, put=pb.PutOp(key=request.key, value=request.value)
        )
        result = await self._execute(context, command)
        return pb.PutResponse(
            revision=result.revision,
            previous=result.kv if result.found else None,
            had_previous=result.found,
        )

    async def Delete(
        self, request: pb.DeleteRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.DeleteResponse:
        await _check_key(context, request.key)
        command = self._command(request.request_id, delete=pb.DeleteOp(key=request.key))
        result = await self._execute(context, command)
        return pb.DeleteResponse(
            revision=result.revision,
            deleted=result.succeeded,
            previous=result.kv if result.succeeded else None,
        )

    async def CompareAndSwap(
        self, request: pb.CompareAndSwapRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CompareAndSwapResponse:
        await _check_key(context, request.key)
        await self._check_quota(context)
        op = pb.CompareAndSwapOp(key=request.key, value=request.value)
        which = request.WhichOneof("expect")
        if which == "expected_value":
            op.expected_value = request.expected_value
        elif which == "expected_version":
            op.expected_version = request.expected_version
        else:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                "compare-and-swap needs expected_value or expected_version",
            )
        result = await self._execute(
            context, self._command(request.request_id, compare_and_swap=op)
        )
        current = result.current if result.HasField("current") else None
        return pb.CompareAndSwapResponse(
            succeeded=result.succeeded,
            revision=result.revision,
            current=current,
            had_current=current is not None,
        )

    # Reads ----------------------------------------------------------------

    async def Get(
        self, request: pb.GetRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetResponse:
        await _check_key(context, request.key)
        if request.stale:
            await self._check_serving(context)
            kv = await self.replica.run(self.replica.machine.get_local, request.key)
            return pb.GetResponse(
                found=kv is not None,
                kv=kv,
                revision=self.replica.machine.revision,
                applied_instance=self.replica.applied_instance,
                lag_instances=self.replica.lag,
            )
        result = await self._execute(
            context, self._command(request.request_id, get=pb.GetOp(key=request.key))
        )
        return pb.GetResponse(
            found=result.found,
            kv=result.kv if result.found else None,
            revision=result.revision,
            applied_instance=self.replica.applied_instance,
        )

    async def Range(
        self, request: pb.RangeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.RangeResponse:
        if request.stale:
            await self._check_serving(context)
            kvs = await self.replica.run(
                self.replica.machine.range_local, request.prefix, request.limit
            )
            return pb.RangeResponse(kvs=kvs, revision=self.replica.machine.revision)
        op = pb.RangeOp(prefix=request.prefix, limit=request.limit)
        result = await self._execute(context, self._command(request.request_id, range=op))
        return pb.RangeResponse(kvs=result.kvs, revision=result.revision)

    async def Compact(
        self, request: pb.CompactRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.CompactResponse:
        if request.revision < 1:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "revision must be >= 1")
        op = pb.CompactOp(revision=request.revision)
        result = await self._execute(context, self._command(request.request_id, compact=op))
        return pb.CompactResponse(revision=result.revision)

    async def GetOutcome(
        self, request: pb.GetOutcomeRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> pb.GetOutcomeResponse:
        """Whether request ``(client_id, sequence)`` was applied, and a true
        answer either way. A fence for the pair goes through the log first
        (a command with that id and no operation; see ``kv/state_machine.py``):

        * the request was applied before the fence: ``applied`` and its result;
        * the fence came first: ``applied=false``, and final, because the
          state machine refuses every later copy of the request (even one
          still in flight, say in a batch that outlived its client's deadline);
        * the store forgot the sequence (older than the dedup window):
          ABORTED "outcome unknown" (``paxos-outcome: forgotten``), never "not
          applied".
        """
        await self._check_serving(context)
        rid = request.request_id
        if rid.client_id == 0 or rid.sequence == 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request_id needs a client_id and a sequence"
            )
        if rid.sequence > MAX_SEQUENCE:
            # The state machine refuses such a sequence: it is never applied.
            return pb.GetOutcomeResponse(applied=False)
        fence = pb.Command(client_id=rid.client_id, sequence=rid.sequence)
        bind_request(context, client_id=fence.client_id, sequence=fence.sequence)
        await self._append_and_apply(context, fence, self._deadline(context))
        state, result = await self.replica.run(
            self.replica.machine.lookup, rid.client_id, rid.sequence
        )
        if state is RequestState.APPLIED:
            return pb.GetOutcomeResponse(applied=True, result=result)
        if state is RequestState.FENCED:
            return pb.GetOutcomeResponse(applied=False)
        await _abort_unknown(
            context,
            f"request (client_id={rid.client_id}, sequence={rid.sequence}) is older than the "
            "sequences this store remembers for its client: whether it was applied cannot be "
            "told any more",
            forgotten=True,
        )
        raise AssertionError("unreachable")

    async def Watch(
        self, request: pb.WatchRequest, context: grpc.aio.ServicerContext[Any, Any]
    ) -> AsyncIterator[pb.WatchResponse]:
        if not request.key and not request.prefix:
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key is required")
        await self._check_serving(context)
        watcher = self.replica.subscribe(request.key, request.prefix)
        machine = self.replica.machine
        metrics.KV_WATCHERS.inc()
        try:
            start = request.start_revision or machine.revision + 1
            while True:  # history first, in pages
                try:
                    events = await self.replica.run(
                        machine.events_since, start, request.key, request.prefix, 500
                    )
                except Compacted as exc:
                    context.set_trailing_metadata(((COMPACT_REVISION_METADATA, str(exc.revision)),))
                    await context.abort(
                        grpc.StatusCode.OUT_OF_RANGE,
                        f"revision {start} is compacted (history through revision "
                        f"{exc.revision} is gone); read the current state and watch from "
                        f"{exc.revision + 1} or later",
                    )
                if not events:
                    break
                start = _event_revision(events[-1]) + 1
                yield pb.WatchResponse(events=events, revision=start - 1)
            while True:  # then live changes
                if watcher.overflowed and watcher.queue.empty():
                    # Checked before every wait, not only after an event sent:
                    # a queue that overflowed during the history replay may
                    # hold only events already sent, and then nothing more
                    # ever arrives (an overflowed watcher gets no events).
                    await context.abort(
                        grpc.StatusCode.RESOURCE_EXHAUSTED,
                        f"watcher fell behind; watch again from revision {start}",
                        trailing_metadata=((WATCH_RESUME_METADATA, str(start)),),
                    )
                item = await watcher.queue.get()
                if item is None:
                    if self.replica.failure is not None:
                        await context.abort(
                            grpc.StatusCode.UNAVAILABLE,
                            f"{LEARNER_FAILED}: {self.replica.failure}; watch again from "
                            f"revision {start} on another learner",
                            trailing_metadata=((WATCH_RESUME_METADATA, str(start)),),
                        )
                    return
                revision, event = item
                if revision < start:
                    continue
                start = revision + 1
                yield pb.WatchResponse(events=[event], revision=revision)
        finally:
            metrics.KV_WATCHERS.dec()
            self.replica.unsubscribe(watcher)

    # Internals --------------------------------------------------------------

    async def _append_until_known(self, command: pb.Command, deadline: float) -> int:
        """Append, and when the outcome is unknown (the leader changed under
        us) append again: the request id makes a second copy harmless, since
        the state machine applies one and answers the other from memory."""
        attempt = 0
        while True:
            try:
                return await self.appender.append(command, deadline)
            except NotLeaderError as exc:
                if attempt:
                    # An earlier attempt may have been appended: "not appended"
                    # would be a lie now.
                    raise OutcomeUnknownError(
                        f"{exc} (after an attempt whose outcome is unknown)"
                    ) from exc
                raise
            except OutcomeUnknownError:
                attempt += 1
                if clock.now() + 0.05 * attempt >= deadline:
                    raise
                self._logger.info("retrying an append whose outcome is unknown", attempt=attempt)
                await asyncio.sleep(0.05 * attempt)

    def _command(self, request_id: pb.RequestId | None, **op: Any) -> pb.Command:
        if request_id is None or not request_id.client_id:
            request_id = self._ids.next()  # done once its call has ended
        return pb.Command(
            client_id=request_id.client_id,
            sequence=request_id.sequence,
            first_incomplete=request_id.first_incomplete,
            **op,
        )

    async def _check_serving(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        failure = self.replica.failure
        if failure is not None:
            await context.abort(
                grpc.StatusCode.UNAVAILABLE,
                f"{LEARNER_FAILED}: {failure}; nothing was appended: try another learner",
            )

    async def _check_quota(self, context: grpc.aio.ServicerContext[Any, Any]) -> None:
        """Writes that add data wait for space: RESOURCE_EXHAUSTED, nothing
        appended. Deletes, reads and compaction are what make room."""
        if self.replica.over_quota:
            await context.abort(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"space quota exceeded: this learner's store takes more than its "
                f"{self.replica.quota_bytes} bytes (--quota-bytes); nothing was appended. "
                "Delete keys or compact history (paxos kv compact), then retry",
            )

    def _deadline(self, context: grpc.aio.ServicerContext[Any, Any]) -> float:
        remaining = context.time_remaining()
        budget = DEFAULT_TIMEOUT if remaining is None else max(0.0, remaining - 0.05)
        return clock.now() + budget

    async def _execute(
        self, context: grpc.aio.ServicerContext[Any, Any], command: pb.Command
    ) -> pb.CommandResult:
        bind_request(context, client_id=command.client_id, sequence=command.sequence)
        await self._check_serving(context)
        if command.ByteSize() > self.max_command_bytes:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT,
                f"request is {command.ByteSize()} bytes; the limit for key and value together "
                f"is about {self.max_command_bytes} bytes",
            )
        if command.client_id and command.sequence == 0:
            await context.abort(
                grpc.StatusCode.INVALID_ARGUMENT, "request_id.sequence must be >= 1"
            )
        deadline = self._deadline(context)
        future = self.replica.expect(command.client_id, command.sequence)
        try:
            await self._append_and_apply(context, command, deadline)
            if future.done():
                result = future.result()
            else:  # applied before we asked: the state machine remembers it
                state, stored = await self.replica.run(
                    self.replica.machine.lookup, command.client_id, command.sequence
                )
                if state is RequestState.APPLIED and stored is not None:
                    result = stored
                elif state is RequestState.FENCED:
                    result = pb.CommandResult(error=_FENCED)
                else:
                    await _abort_unknown(
                        context, "applied, but this learner no longer remembers the result"
                    )
        finally:
            self.replica.forget(command.client_id, command.sequence)
            if command.client_id == self._ids.client_id:
                # A request without an id: nobody can ask for it again.
                self._ids.done(command.sequence)
        if result.error:
            if is_forgotten(result):
                await _abort_unknown(
                    context,
                    f"{result.error}; an earlier copy may have been applied, and no retry can "
                    "tell: do not send it again as a new request",
                    forgotten=True,
                )
            if result.error == _NO_OPERATION and command.WhichOneof("op") is not None:
                # Our copy of the request found the result of a GetOutcome
                # fence for the same id: the fence came first in the log.
                await context.abort(grpc.StatusCode.INVALID_ARGUMENT, _FENCED)
            await context.abort(grpc.StatusCode.INVALID_ARGUMENT, result.error)
        return result

    async def _append_and_apply(
        self, context: grpc.aio.ServicerContext[Any, Any], command: pb.Command, deadline: float
    ) -> None:
        """Append ``command`` and wait until this learner applied it; abort
        the call with a true status otherwise (see the module docstring)."""
        try:
            instance = await self._append_until_known(command, deadline)
            await asyncio.wait_for(self.replica.wait_applied(instance), deadline - clock.now())
        except NotLeaderError as exc:
            await context.abort(grpc.StatusCode.UNAVAILABLE, str(exc))
        except grpc.aio.AioRpcError as exc:  # refused by the proposer before appending
            await context.abort(exc.code(), f"proposer: {exc.details()}")
        except OutcomeUnknownError as exc:
            await _abort_unknown(
                context, f"{exc}; retry with the same request id or ask GetOutcome"
            )
        except TimeoutError:
            await _abort_unknown(context, "appended but not applied here before the deadline")
        except ReplicaFailed as exc:
            await _abort_unknown(
                context,
                f"appended, but {LEARNER_FAILED} ({exc}); retry with the same request id on "
                "another learner",
            )


#: What the state machine answers a fence (a command with no operation).
_NO_OPERATION = "command has no operation"
_FENCED = (
    "not applied, and never will be: a GetOutcome for this request id fenced it first "
    "(send it again under a new sequence)"
)


async def _abort_unknown(
    context: grpc.aio.ServicerContext[Any, Any], message: str, *, forgotten: bool = False
) -> None:
    await context.abort(
        grpc.StatusCode.ABORTED,
        f"{OUTCOME_UNKNOWN}: {message}",
        trailing_metadata=((OUTCOME_METADATA, "forgotten" if forgotten else "unknown"),),
    )


def _event_revision(event: pb.WatchEvent) -> int:
    revision: int = event.kv.mod_revision
    return revision


async def _check_key(context: grpc.aio.ServicerContext[Any, Any], key: str) -> None:
    if not key:
        await context.abort(grpc.StatusCode.INVALID_ARGUMENT, "key must not be empty")
    if len(key.encode()) > MAX_KEY_BYTES:
        await context.abort(
            grpc.StatusCode.INVALID_ARGUMENT, f"key is longer than {MAX_KEY_BYTES} bytes"
        )
