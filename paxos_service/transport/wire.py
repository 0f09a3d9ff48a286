"""Translation between protobuf messages and :mod:`roles` dataclasses.

This is the only place that knows both vocabularies. Anything that cannot be a
valid protocol message raises :class:`WireError`, which servers turn into
INVALID_ARGUMENT.
"""

from __future__ import annotations

from paxos_service.core.config import MAX_INSTANCE
from paxos_service.v1 import paxos_pb2 as pb
from roles import (
    Accept,
    Accepted,
    Ballot,
    Decide,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    Reject,
)
from roles.ballot import MAX_BALLOT_FIELD
from roles.recovery import AcceptorStatus


class WireError(ValueError):
    """A request that is malformed; the message says which field and why."""


def check_instance(instance: int) -> int:
    if instance < 1:
        raise WireError("instance must be >= 1 (instances are numbered from 1)")
    if instance > MAX_INSTANCE:
        raise WireError(f"instance must be <= {MAX_INSTANCE}")
    return instance


def ballot_from_pb(msg: pb.Ballot, *, required: bool, what: str = "ballot") -> Ballot:
    if msg.round > MAX_BALLOT_FIELD or msg.proposer_id > MAX_BALLOT_FIELD:
        raise WireError(f"{what} fields must be < 2**63")
    ballot = Ballot(msg.round, msg.proposer_id)
    if required and ballot.is_zero:
        raise WireError(f"{what} is required and its round must be >= 1 (round 0 means 'none')")
    return ballot


def ballot_to_pb(ballot: Ballot) -> pb.Ballot:
    return pb.Ballot(round=ballot.round, proposer_id=ballot.proposer_id)


def prepare_from_pb(msg: pb.Prepare) -> Prepare:
    return Prepare(check_instance(msg.instance), ballot_from_pb(msg.ballot, required=True))


def prepare_to_pb(msg: Prepare) -> pb.Prepare:
    return pb.Prepare(instance=msg.instance, ballot=ballot_to_pb(msg.ballot))


def accept_from_pb(msg: pb.Accept, max_value_bytes: int) -> Accept:
    if msg.compact_through > msg.chosen_through:
        raise WireError(
            f"compact_through {msg.compact_through} is above chosen_through "
            f"{msg.chosen_through}: only chosen instances can be compacted"
        )
    return Accept(
        check_instance(msg.instance),
        ballot_from_pb(msg.ballot, required=True),
        check_value(msg.value, max_value_bytes),
        msg.chosen_through,
        msg.compact_through,
    )


def accept_to_pb(msg: Accept) -> pb.Accept:
    return pb.Accept(
        instance=msg.instance,
        ballot=ballot_to_pb(msg.ballot),
        value=msg.value,
        chosen_through=msg.chosen_through,
        compact_through=msg.compact_through,
    )


def is_log(space: pb.InstanceSpace.ValueType) -> bool:
    """True for the replicated log's instances, False for single-decree ones
    (the default); anything else is a WireError."""
    if space not in (pb.INSTANCE_SPACE_UNSPECIFIED, pb.INSTANCE_SPACE_LOG):
        raise WireError(f"unknown instance space {space}")
    return space == pb.INSTANCE_SPACE_LOG


def space_of(log: bool) -> pb.InstanceSpace.ValueType:
    return pb.INSTANCE_SPACE_LOG if log else pb.INSTANCE_SPACE_UNSPECIFIED


def check_value(value: bytes, max_value_bytes: int) -> bytes:
    if not value:
        raise WireError("value must not be empty")
    if len(value) > max_value_bytes:
        raise WireError(f"value is {len(value)} bytes; the limit is {max_value_bytes} bytes")
    return value


def promise_to_pb(msg: Promise) -> pb.Promise:
    out = pb.Promise(
        instance=msg.instance, ballot=ballot_to_pb(msg.ballot), acceptor_id=msg.acceptor_id
    )
    if msg.accepted_value is not None:
        out.accepted_ballot.CopyFrom(ballot_to_pb(msg.accepted_ballot))
        out.accepted_value = msg.accepted_value
    return out


def promise_from_pb(msg: pb.Promise) -> Promise:
    accepted = ballot_from_pb(msg.accepted_ballot, required=False, what="accepted_ballot")
    return Promise(
        instance=msg.instance,
        ballot=ballot_from_pb(msg.ballot, required=True),
        acceptor_id=msg.acceptor_id,
        accepted_ballot=accepted,
        accepted_value=None if accepted.is_zero else msg.accepted_value,
    )


def accepted_to_pb(msg: Accepted) -> pb.Accepted:
    return pb.Accepted(
        instance=msg.instance,
        ballot=ballot_to_pb(msg.ballot),
        acceptor_id=msg.acceptor_id,
        value=msg.value,
    )


def accepted_from_pb(msg: pb.Accepted) -> Accepted:
    return Accepted(
        msg.instance, ballot_from_pb(msg.ballot, required=True), msg.acceptor_id, msg.value
    )


def reject_to_pb(msg: Reject) -> pb.Reject:
    return pb.Reject(
        instance=msg.instance,
        ballot=ballot_to_pb(msg.ballot),
        acceptor_id=msg.acceptor_id,
        promised_ballot=ballot_to_pb(msg.promised_ballot),
    )


def reject_from_pb(msg: pb.Reject) -> Reject:
    return Reject(
        msg.instance,
        ballot_from_pb(msg.ballot, required=True),
        msg.acceptor_id,
        ballot_from_pb(msg.promised_ballot, required=False, what="promised_ballot"),
    )


def decide_to_pb(msg: Decide) -> pb.Decide:
    return pb.Decide(instance=msg.instance, ballot=ballot_to_pb(msg.ballot), value=msg.value)


def decide_from_pb(msg: pb.Decide, max_value_bytes: int) -> Decide:
    return Decide(
        check_instance(msg.instance),
        ballot_from_pb(msg.ballot, required=True),
        check_value(msg.value, max_value_bytes),
    )


def prepare_response_from_pb(msg: pb.PrepareResponse) -> Promise | Reject:
    if msg.HasField("promise"):
        return promise_from_pb(msg.promise)
    if msg.HasField("reject"):
        return reject_from_pb(msg.reject)
    raise WireError("PrepareResponse carries neither a promise nor a reject")


def accept_response_from_pb(msg: pb.AcceptResponse) -> Accepted | Reject:
    if msg.HasField("accepted"):
        return accepted_from_pb(msg.accepted)
    if msg.HasField("reject"):
        return reject_from_pb(msg.reject)
    raise WireError("AcceptResponse carries neither an accepted nor a reject")


def prepare_range_from_pb(msg: pb.PrepareRange) -> PrepareRange:
    return PrepareRange(
        check_instance(msg.from_instance),
        ballot_from_pb(msg.ballot, required=True),
        msg.page_from,
    )


def prepare_range_to_pb(msg: PrepareRange) -> pb.PrepareRange:
    return pb.PrepareRange(
        from_instance=msg.from_instance, ballot=ballot_to_pb(msg.ballot), page_from=msg.page_from
    )


def promise_range_to_pb(msg: PromiseRange) -> pb.PromiseRange:
    return pb.PromiseRange(
        from_instance=msg.from_instance,
        ballot=ballot_to_pb(msg.ballot),
        acceptor_id=msg.acceptor_id,
        accepted=[accepted_to_pb(a) for a in msg.accepted],
        chosen_through=msg.chosen_through,
        page_from=msg.page_from,
        next_page=msg.next_page,
    )


def promise_range_from_pb(msg: pb.PromiseRange) -> PromiseRange:
    return PromiseRange(
        msg.from_instance,
        ballot_from_pb(msg.ballot, required=True),
        msg.acceptor_id,
        tuple(accepted_from_pb(a) for a in msg.accepted),
        chosen_through=msg.chosen_through,
        page_from=msg.page_from,
        next_page=msg.next_page,
    )


def prepare_range_response_from_pb(msg: pb.PrepareRangeResponse) -> PromiseRange | Reject:
    if msg.HasField("promise"):
        return promise_range_from_pb(msg.promise)
    if msg.HasField("reject"):
        return reject_from_pb(msg.reject)
    raise WireError("PrepareRangeResponse carries neither a promise nor a reject")


def acceptor_status_to_pb(status: AcceptorStatus) -> pb.AcceptorStatus.ValueType:
    """``AcceptorStatus.WIPED`` -> ``ACCEPTOR_STATUS_WIPED``: one value each."""
    return pb.AcceptorStatus.Value(f"ACCEPTOR_STATUS_{status.name}")
