"""The compaction point: how T is made, what acceptors do below it, and how a
leader takes an acceptor's refusal (roles/compaction.py)."""

from __future__ import annotations

import pytest

from roles import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Compacted,
    OutcomeUnknown,
    Prepare,
    PrepareRange,
    PromiseRange,
    RangePromise,
    Role,
    SendToAcceptors,
)
from roles.compaction import advance, compaction_point
from tests.unit.leader_support import accepts, elect, leader_with_work, make, of

OLD = Ballot(1, 2)


@pytest.mark.parametrize(
    ("indexes", "learners", "chosen", "expected"),
    [
        ([], 3, 100, 0),  # nobody reported
        ([50], 3, 100, 0),  # one of three is no majority
        ([50, 70], 3, 100, 50),  # the lower of the two highest
        ([50, 70, 90], 3, 100, 70),  # the median: two of three hold 70
        ([50, 70, 90], 3, 60, 60),  # never above what is known chosen
        ([40], 1, 100, 40),
        ([10, 20, 30, 40, 50], 5, 100, 30),
        ([0, 0, 90], 3, 100, 0),
    ],
)
def test_compaction_point_is_what_a_majority_of_learners_holds(
    indexes: list[int], learners: int, chosen: int, expected: int
) -> None:
    assert compaction_point(indexes, learners, chosen) == expected


def test_the_compaction_point_never_moves_back() -> None:
    assert advance(70, 50) == 70
    assert advance(50, 70) == 70


def test_acceptor_refuses_votes_at_or_below_the_point_and_changes_nothing() -> None:
    acceptor = Acceptor(1)
    state = AcceptorState(OLD, OLD, b"v")
    for step in (
        lambda: acceptor.on_prepare(state, Prepare(10, Ballot(5, 1)), compacted_through=10),
        lambda: acceptor.on_accept(state, Accept(7, Ballot(5, 1), b"w"), compacted_through=10),
    ):
        with pytest.raises(Compacted) as refused:
            step()
        assert refused.value.compacted_through == 10
    # Above the point, the usual rules.
    step = acceptor.on_accept(state, Accept(11, Ballot(5, 1), b"w"), compacted_through=10)
    assert step.persist


def test_promise_range_never_reports_what_is_compacted_even_without_the_skip() -> None:
    acceptor = Acceptor(1)
    states = {i: AcceptorState(OLD, OLD, b"x") for i in range(5, 15)}
    step = acceptor.on_prepare_range(
        RangePromise(), states, PrepareRange(1, Ballot(9, 1)), chosen_through=0, compacted_through=8
    )
    assert isinstance(step.reply, PromiseRange)
    assert step.reply.chosen_through == 8
    assert [a.instance for a in step.reply.accepted] == list(range(9, 15))


def test_leader_sends_the_point_a_majority_of_learners_reported() -> None:
    leader = make()
    elect(leader)
    for token in range(1, 3):
        leader.submit(token, b"c", 0.0)
    for instance in (1, 2):
        value = leader._pipeline.in_flight[instance].value
        for acceptor in (1, 2):
            leader.on_accepted(Accepted(instance, leader.ballot, acceptor, value), 0.0)
    assert leader.chosen_through == 2
    leader.on_snapshot_indexes([2, 1, 0], learners=3)
    assert leader.compact_through == 1
    leader.on_snapshot_indexes([0, 0, 0], learners=3)  # a wiped learner: T stays
    assert leader.compact_through == 1
    effects = leader.submit(3, b"d", 0.0)
    sent = [e.message for e in of(SendToAcceptors, effects) if isinstance(e.message, Accept)]
    assert sent and all(m.compact_through == 1 and m.chosen_through == 2 for m in sent)


def test_leader_told_of_compaction_stops_proposing_below_it() -> None:
    """An acceptor compacted through 3 while this leader still had 1-4 in
    flight (it recovered them from a majority that had not heard of T): they
    are chosen, so it moves on, and the commands there are of unknown outcome."""
    leader = leader_with_work()
    effects = leader.on_compacted(1, 3, 0.0)
    assert leader.role is Role.LEADER
    assert leader.chosen_through >= 3
    assert leader.compact_through == 3
    unknown = of(OutcomeUnknown, effects)
    assert unknown and unknown[0].tokens == (1, 2, 3)
    assert all(instance > 4 for instance, _ in accepts(effects))
    assert min(leader._pipeline.in_flight) == 4  # the rest goes on above T
    assert leader.queued == 0  # the queued commands went out, above it


def test_follower_told_of_compaction_only_learns_the_chosen_prefix() -> None:
    leader = make()
    assert leader.on_compacted(2, 40, 0.0) == []
    assert leader.chosen_through == 40
    assert leader.role is Role.FOLLOWER
