"""What the clients return: plain frozen dataclasses, never protobuf messages,
and the one place that builds them from the service's answers."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from paxos_service.v1 import paxos_pb2 as pb


@dataclass(frozen=True)
class ProposeResult:
    instance: int
    value: bytes
    own_value_chosen: bool
    ballot: tuple[int, int]


@dataclass(frozen=True)
class KeyValue:
    """One key as stored. ``version`` counts changes since the key was
    (re)created (1 after the first put); revisions are store-wide."""

    key: str
    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class PutResult:
    #: The store revision of this put.
    revision: int
    #: The key as it was before, or None if it was absent.
    previous: KeyValue | None


@dataclass(frozen=True)
class DeleteResult:
    #: The store revision after the delete (unchanged if nothing was deleted).
    revision: int
    deleted: bool
    #: The deleted key, or None if it was absent.
    previous: KeyValue | None


@dataclass(frozen=True)
class CasResult:
    succeeded: bool
    #: The store revision after the call: the swap's own revision on success.
    revision: int
    #: On failure, the key as it is (None if absent), so the caller can decide
    #: what to try next. None on success: the new value is the one written.
    current: KeyValue | None


@dataclass(frozen=True)
class GetResult:
    kv: KeyValue | None
    #: The store revision the read saw.
    revision: int
    #: The last log instance applied by the learner that answered.
    applied_instance: int
    #: Stale reads: decided instances that learner knows of but has not yet
    #: applied (how far behind it may be). 0 for linearizable reads.
    lag_instances: int


@dataclass(frozen=True)
class WatchEvent:
    type: Literal["put", "delete"]
    #: After a put, the key as written. After a delete, the key with an empty
    #: value and ``mod_revision`` the revision of the delete.
    kv: KeyValue
    #: The key before the change, or None if it was absent.
    previous: KeyValue | None
    #: The store revision of the change.
    revision: int


@dataclass(frozen=True)
class Outcome:
    """What an applied request returned, as the state machine remembers it."""

    #: The store revision after the request.
    revision: int
    #: Put, delete, compare-and-swap: whether it changed the store.
    succeeded: bool
    #: Get: the key read. Put, delete, compare-and-swap: the key before.
    kv: KeyValue | None
    #: A compare-and-swap that failed: the key as it was.
    current: KeyValue | None
    #: Range: the keys read.
    kvs: tuple[KeyValue, ...]


# Proto -> results ----------------------------------------------------------------


def propose_result(response: pb.ProposeResponse) -> ProposeResult:
    return ProposeResult(
        instance=response.instance,
        value=response.value,
        own_value_chosen=response.own_value_chosen,
        ballot=(response.ballot.round, response.ballot.proposer_id),
    )


def key_value(message: pb.KeyValue) -> KeyValue:
    return KeyValue(
        key=message.key,
        value=message.value,
        version=message.version,
        create_revision=message.create_revision,
        mod_revision=message.mod_revision,
    )


def _key_value_if(present: bool, message: pb.KeyValue) -> KeyValue | None:
    return key_value(message) if present else None


def put_result(response: pb.PutResponse) -> PutResult:
    return PutResult(response.revision, _key_value_if(response.had_previous, response.previous))


def delete_result(response: pb.DeleteResponse) -> DeleteResult:
    return DeleteResult(
        response.revision, response.deleted, _key_value_if(response.deleted, response.previous)
    )


def cas_result(response: pb.CompareAndSwapResponse) -> CasResult:
    return CasResult(
        response.succeeded, response.revision, _key_value_if(response.had_current, response.current)
    )


def get_result(response: pb.GetResponse) -> GetResult:
    return GetResult(
        kv=_key_value_if(response.found, response.kv),
        revision=response.revision,
        applied_instance=response.applied_instance,
        lag_instances=response.lag_instances,
    )


def outcome(response: pb.GetOutcomeResponse) -> Outcome | None:
    if not response.applied:
        return None
    result = response.result
    return Outcome(
        revision=result.revision,
        succeeded=result.succeeded,
        kv=_key_value_if(result.found and result.HasField("kv"), result.kv),
        current=_key_value_if(result.HasField("current"), result.current),
        kvs=tuple(key_value(item) for item in result.kvs),
    )


def watch_event(event: pb.WatchEvent) -> WatchEvent:
    kind: Literal["put", "delete"] = (
        "delete" if event.type == pb.WatchEvent.EVENT_TYPE_DELETE else "put"
    )
    return WatchEvent(
        type=kind,
        kv=key_value(event.kv),
        previous=_key_value_if(event.had_previous, event.previous),
        revision=event.kv.mod_revision,
    )
