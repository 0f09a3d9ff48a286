"""The Multi-Paxos leader refuses illegal input without changing its state.

The leader is an object, so "stale or illegal input changes nothing" is
checked, as for the proposer, by snapshotting every attribute it has
(including private ones) before the input and comparing after it, in every
role: follower, candidate and leader.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import pytest

from roles import (
    ZERO_BALLOT,
    Accepted,
    Assigned,
    Ballot,
    Heartbeat,
    Leader,
    LeaderConfig,
    LeaderEffect,
    PrepareRange,
    PromiseRange,
    ProtocolError,
    Reject,
    Rejected,
    SendToAcceptors,
)
from tests.unit.leader_support import (
    ACCEPTORS,
    NOOP,
    PEERS,
    PID,
    Encoder,
    RecordingRandom,
    b,
    choose,
    elect,
    leader_with_work,
    make,
    of,
    promise,
    snapshot,
)

# Illegal input leaves the state unchanged --------------------------------------------


def follower() -> Leader:
    leader = make()
    leader.start(0.0)
    leader.on_heartbeat(Heartbeat(Ballot(1, 2), 2, 0), 0.1)
    return leader


def candidate() -> Leader:
    leader = make()
    leader.campaign(0.0)
    leader.on_promise_range(promise(1, b(1)), 0.1)
    return leader


ROLES = {"follower": follower, "candidate": candidate, "leader": leader_with_work}

ILLEGAL: dict[str, Callable[[Leader], list[Any]]] = {
    "promise-from-unknown-acceptor": lambda x: x.on_promise_range(promise(9, b(1)), 1.0),
    "promise-with-zero-ballot": lambda x: x.on_promise_range(promise(2, ZERO_BALLOT), 1.0),
    "promise-from-instance-0": lambda x: x.on_promise_range(promise(2, b(1), start=0), 1.0),
    "promise-reporting-for-another-acceptor": lambda x: x.on_promise_range(
        PromiseRange(1, b(1), 2, (Accepted(3, Ballot(1, 2), 3, b"v"),)), 1.0
    ),
    "promise-reporting-below-its-start": lambda x: x.on_promise_range(
        promise(2, b(1), (1, Ballot(1, 2), b"v"), start=2), 1.0
    ),
    "promise-reporting-its-own-ballot": lambda x: x.on_promise_range(
        promise(2, b(1), (1, b(1), b"v")), 1.0
    ),
    "accepted-from-unknown-acceptor": lambda x: x.on_accepted(Accepted(1, b(1), 9, b"v"), 1.0),
    "accepted-with-zero-ballot": lambda x: x.on_accepted(Accepted(1, ZERO_BALLOT, 2, b"v"), 1.0),
    "reject-from-unknown-acceptor": lambda x: x.on_reject(Reject(1, b(1), 9, b(5)), 1.0),
    "reject-below-the-rejected-ballot": lambda x: x.on_reject(Reject(1, b(5), 2, b(1)), 1.0),
    "reject-with-zero-ballot": lambda x: x.on_reject(Reject(1, ZERO_BALLOT, 2, b(5)), 1.0),
    "heartbeat-from-unknown-peer": lambda x: x.on_heartbeat(Heartbeat(Ballot(9, 7), 7, 0), 1.0),
    "heartbeat-from-itself": lambda x: x.on_heartbeat(Heartbeat(b(9), PID, 0), 1.0),
    "heartbeat-with-anothers-ballot": lambda x: x.on_heartbeat(Heartbeat(Ballot(9, 3), 2, 0), 1.0),
    "heartbeat-with-zero-ballot": lambda x: x.on_heartbeat(Heartbeat(ZERO_BALLOT, 2, 0), 1.0),
    "heartbeat-with-negative-chosen-through": lambda x: x.on_heartbeat(
        Heartbeat(Ballot(9, 2), 2, -1), 1.0
    ),
    "heartbeat-reply-from-unknown-peer": lambda x: x.on_heartbeat_reply(7, b(9), 1.0),
    "learned-instance-0": lambda x: x.on_learned(0, 1.0),
}


@pytest.mark.parametrize("role", ROLES)
@pytest.mark.parametrize("name", ILLEGAL)
def test_illegal_input_is_a_protocol_error_and_changes_nothing(role: str, name: str) -> None:
    leader = ROLES[role]()
    before = snapshot(leader)
    with pytest.raises(ProtocolError):
        ILLEGAL[name](leader)
    assert snapshot(leader) == before


def test_accepted_with_a_value_the_ballot_never_carried_is_a_protocol_error() -> None:
    leader = leader_with_work()
    before = snapshot(leader)
    with pytest.raises(ProtocolError, match="never"):
        leader.on_accepted(Accepted(1, b(1), 2, b"forged"), 1.0)
    assert snapshot(leader) == before


def test_a_token_already_in_use_is_a_protocol_error() -> None:
    leader = leader_with_work()
    before = snapshot(leader)
    for token in (1, 5):  # in flight, queued
        with pytest.raises(ProtocolError, match="token"):
            leader.submit(token, b"again", 1.0)
    assert snapshot(leader) == before


def test_a_restarted_proposer_that_persisted_its_round_starts_above_it() -> None:
    """The driver's alternative to "replies reach only their own incarnation"."""
    leader = Leader(
        proposer_id=PID,
        acceptor_ids=ACCEPTORS,
        peer_ids=PEERS,
        rng=RecordingRandom(),
        encode_batch=Encoder(),
        noop_value=NOOP,
        chosen_through=12,
        min_round=7,
    )
    assert leader.next_instance == 13
    assert leader.campaign(0.0)[0] == SendToAcceptors(PrepareRange(13, b(8)))


def test_batches_are_capped_in_bytes_as_well_as_in_commands() -> None:
    """A value must fit the acceptors' size limit: commands that would push a
    batch over max_batch_bytes wait for the next instance."""
    leader = make(config=LeaderConfig(window=1, max_batch=100, max_batch_bytes=10))
    elect(leader)
    effects: list[LeaderEffect] = []
    for token in range(1, 6):
        effects += leader.submit(token, b"x" * 4, 0.0)
    # The window had room for one instance: token 1 went out alone at once.
    assert [a.tokens for a in of(Assigned, effects)] == [(1,)]
    effects = choose(leader, of(Assigned, effects)[0].instance)
    # 4 + 4 bytes fit in 10; a third command would not.
    assert [a.tokens for a in of(Assigned, effects)] == [(2, 3)]


def test_submit_many_is_all_or_nothing() -> None:
    leader = make()
    elect(leader)
    leader.submit(1, b"a", 0.0)
    before = snapshot(leader)
    for bad in ([(2, b"x"), (2, b"y")], [(3, b"x"), (1, b"y")]):
        with pytest.raises(ProtocolError):
            leader.submit_many(bad, 0.0)
        assert snapshot(leader) == before
    assert leader.submit_many([], 0.0) == []
    follower = make()
    assert follower.submit_many([(1, b"a"), (2, b"b")], 0.0) == [
        Rejected((1, 2), None, f"proposer {PID} is not leader")
    ]
