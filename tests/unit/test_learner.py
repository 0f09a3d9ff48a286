"""The learner ("Paxos Made Simple", section 2.3: learning a chosen value).

A value is chosen when a majority of acceptors has accepted one proposal
(section 2.1), i.e. the *same ballot*. Votes for different ballots do not add
up even when they carry the same value. A learner may also be told the outcome
by a proposer (:class:`Decide`), which section 2.3 allows as an optimisation.
"""

from __future__ import annotations

import copy
from typing import Any

import pytest

from roles import (
    ZERO_BALLOT,
    Accepted,
    Ballot,
    Conflict,
    Decide,
    Learned,
    Learner,
    ProtocolError,
)

ACCEPTORS = frozenset({1, 2, 3})
INSTANCE = 4


def b(round_: int, proposer_id: int = 1) -> Ballot:
    return Ballot(round_, proposer_id)


def vote(acceptor_id: int, ballot: Ballot, value: bytes, instance: int = INSTANCE) -> Accepted:
    return Accepted(instance, ballot, acceptor_id, value)


def snapshot(learner: Learner) -> dict[str, Any]:
    return copy.deepcopy(vars(learner))


@pytest.fixture
def learner() -> Learner:
    return Learner(ACCEPTORS)


def test_majority_of_accepted_for_one_ballot_is_learned(learner: Learner) -> None:
    """Section 2.3: the learner finds out a value is chosen once a majority of
    acceptors report accepting the same proposal."""
    assert learner.on_accepted(vote(1, b(2), b"v")) is None
    assert learner.decision(INSTANCE) is None
    learned = learner.on_accepted(vote(3, b(2), b"v"))
    assert learned == Learned(INSTANCE, b(2), b"v")
    assert learner.decision(INSTANCE) == learned
    assert learner.decided_instances == 1


def test_five_acceptors_need_three_votes() -> None:
    learner = Learner(frozenset({1, 2, 3, 4, 5}))
    assert learner.on_accepted(vote(1, b(1), b"v")) is None
    assert learner.on_accepted(vote(2, b(1), b"v")) is None
    assert learner.on_accepted(vote(5, b(1), b"v")) == Learned(INSTANCE, b(1), b"v")


def test_duplicate_vote_counts_once(learner: Learner) -> None:
    learner.on_accepted(vote(1, b(2), b"v"))
    assert learner.on_accepted(vote(1, b(2), b"v")) is None
    assert learner.decision(INSTANCE) is None


def test_votes_for_different_ballots_do_not_combine(learner: Learner) -> None:
    """Section 2.1: a value is chosen by a majority accepting *one proposal*.
    One acceptor at 1.1 and another at 2.1 is no majority for either, even for
    the same value."""
    assert learner.on_accepted(vote(1, b(1), b"v")) is None
    assert learner.on_accepted(vote(2, b(2), b"v")) is None
    assert learner.on_accepted(vote(3, b(3), b"v")) is None
    assert learner.decision(INSTANCE) is None
    # A second vote for 2.1 completes that ballot's majority.
    assert learner.on_accepted(vote(3, b(2), b"v")) == Learned(INSTANCE, b(2), b"v")


def test_votes_may_arrive_in_any_order(learner: Learner) -> None:
    """Acceptance is a fact about the past: a later, higher acceptance by the
    same acceptor does not withdraw its earlier vote."""
    learner.on_accepted(vote(1, b(5), b"v"))
    learner.on_accepted(vote(1, b(2), b"v"))
    assert learner.on_accepted(vote(2, b(2), b"v")) == Learned(INSTANCE, b(2), b"v")


def test_instances_are_learned_independently(learner: Learner) -> None:
    learner.on_accepted(vote(1, b(1), b"a", instance=1))
    learner.on_accepted(vote(2, b(1), b"b", instance=2))
    assert learner.decided_instances == 0
    assert learner.on_accepted(vote(2, b(1), b"a", instance=1)) == Learned(1, b(1), b"a")
    assert learner.decision(2) is None


def test_votes_after_the_decision_return_the_decision(learner: Learner) -> None:
    learner.on_accepted(vote(1, b(2), b"v"))
    learned = learner.on_accepted(vote(2, b(2), b"v"))
    # A straggler from an older ballot (which never reached a majority) does not
    # disturb what is known: it is counted (in case it ever makes a majority
    # for another value, see below), and the decision stands.
    assert learner.on_accepted(vote(3, b(1), b"old")) == learned
    assert learner.on_accepted(vote(3, b(3), b"v")) == learned


def test_decide_is_learned(learner: Learner) -> None:
    learned = learner.on_decide(Decide(INSTANCE, b(3), b"v"))
    assert learned == Learned(INSTANCE, b(3), b"v")
    assert learner.decision(INSTANCE) == learned


def test_agreeing_decisions_keep_the_first(learner: Learner) -> None:
    first = learner.on_decide(Decide(INSTANCE, b(3), b"v"))
    assert learner.on_decide(Decide(INSTANCE, b(7, 2), b"v")) == first
    learner.on_accepted(vote(1, b(9), b"v"))
    assert learner.on_accepted(vote(2, b(9), b"v")) == first


def test_conflicting_decide_is_a_conflict_and_changes_nothing(learner: Learner) -> None:
    """Section 2.1's safety requirement: only a single value is chosen. A
    Decide for another value is reported as a Conflict naming both, and the
    first decision stands.

    On the old code on_decide raised SafetyViolation instead of returning a
    value the server could act on (this test failed with that exception)."""
    learner.on_decide(Decide(INSTANCE, b(3), b"v"))
    before = snapshot(learner)
    result = learner.on_decide(Decide(INSTANCE, b(4), b"w"))
    assert result == Conflict(INSTANCE, b(3), b"v", b(4), b"w", "decide")
    assert "b'v'" in result.describe() and "b'w'" in result.describe()
    assert snapshot(learner) == before
    assert learner.decision(INSTANCE) == Learned(INSTANCE, b(3), b"v")


def test_a_conflicting_majority_after_a_decide_is_a_conflict(learner: Learner) -> None:
    """Once decided, the learner still counts votes for any
    other value, and a majority for one is a Conflict (with both ballots and
    values); the decision stays the first one.

    On the old code the tallies were dropped at the decision and every later
    vote just returned the decision: the second vote for b"w" returned
    Learned(v), not a Conflict, so this test failed."""
    learner.on_accepted(vote(1, b(5), b"w"))
    learner.on_decide(Decide(INSTANCE, b(3), b"v"))
    assert learner.decision(INSTANCE) == Learned(INSTANCE, b(3), b"v")
    result = learner.on_accepted(vote(2, b(5), b"w"))
    assert result == Conflict(INSTANCE, b(3), b"v", b(5), b"w", "accepted")
    assert learner.decision(INSTANCE) == Learned(INSTANCE, b(3), b"v")
    # The evidence stays: a duplicate vote reports it again, and still changes nothing.
    before = snapshot(learner)
    assert learner.on_accepted(vote(2, b(5), b"w")) == result
    assert snapshot(learner) == before


def test_two_majorities_for_different_values_are_a_conflict(learner: Learner) -> None:
    """Two majorities (under two ballots) for two values: the one completed
    second is a Conflict, even though its first vote came before the decision.

    On the old code the last vote returned the first decision (Learned)."""
    assert learner.on_accepted(vote(1, b(2), b"v")) is None
    assert learner.on_accepted(vote(3, b(7), b"w")) is None
    first = learner.on_accepted(vote(2, b(2), b"v"))
    assert first == Learned(INSTANCE, b(2), b"v")
    assert learner.on_accepted(vote(3, b(2), b"v")) == first  # agrees: not counted
    conflict = learner.on_accepted(vote(1, b(7), b"w"))
    assert isinstance(conflict, Conflict)
    assert (conflict.ballot, conflict.value) == (b(2), b"v")
    assert (conflict.conflicting_ballot, conflict.conflicting_value) == (b(7), b"w")
    assert learner.decision(INSTANCE) == first


def test_agreeing_votes_after_the_decision_leave_the_state_unchanged(learner: Learner) -> None:
    """Votes for the decided value (any ballot) are not kept: memory does not
    grow with retransmissions once an instance is decided."""
    learner.on_accepted(vote(1, b(2), b"v"))
    learned = learner.on_accepted(vote(2, b(2), b"v"))
    before = snapshot(learner)
    for acceptor in (1, 2, 3):
        assert learner.on_accepted(vote(acceptor, b(9), b"v")) == learned
        assert learner.on_accepted(vote(acceptor, b(2), b"v")) == learned
    assert snapshot(learner) == before


def test_a_stray_vote_for_another_value_is_no_conflict(learner: Learner) -> None:
    """One acceptor that accepted another value under a ballot that lost is
    normal: only a majority for it is a violation."""
    learner.on_accepted(vote(1, b(2), b"v"))
    learned = learner.on_accepted(vote(2, b(2), b"v"))
    assert learner.on_accepted(vote(3, b(1), b"old")) == learned
    assert learner.decision(INSTANCE) == learned


def test_another_value_under_the_decided_ballot_is_a_protocol_error(learner: Learner) -> None:
    learner.on_decide(Decide(INSTANCE, b(3), b"v"))
    before = snapshot(learner)
    with pytest.raises(ProtocolError, match="two values"):
        learner.on_accepted(vote(1, b(3), b"w"))
    assert snapshot(learner) == before


def test_decide_contradicting_a_learned_majority_is_a_conflict(learner: Learner) -> None:
    """On the old code this raised SafetyViolation."""
    learner.on_accepted(vote(1, b(2), b"v"))
    learner.on_accepted(vote(2, b(2), b"v"))
    before = snapshot(learner)
    result = learner.on_decide(Decide(INSTANCE, b(4), b"other"))
    assert result == Conflict(INSTANCE, b(2), b"v", b(4), b"other", "decide")
    assert snapshot(learner) == before


# Illegal input: ProtocolError, nothing changes ---------------------------------


@pytest.mark.parametrize(
    "msg",
    [
        vote(9, b(2), b"v"),
        vote(0, b(2), b"v"),
        vote(1, ZERO_BALLOT, b"v"),
        vote(1, Ballot(0, 4), b"v"),
    ],
    ids=["unknown-acceptor", "acceptor-zero", "zero-ballot", "round-zero"],
)
def test_illegal_accepted_is_a_protocol_error_and_changes_nothing(
    learner: Learner, msg: Accepted
) -> None:
    learner.on_accepted(vote(1, b(2), b"v"))
    before = snapshot(learner)
    with pytest.raises(ProtocolError):
        learner.on_accepted(msg)
    assert snapshot(learner) == before
    # And the stray message did not count: one more real vote is still needed.
    assert learner.on_accepted(vote(2, b(2), b"v")) == Learned(INSTANCE, b(2), b"v")


def test_unknown_acceptor_is_rejected_even_after_the_decision(learner: Learner) -> None:
    learner.on_decide(Decide(INSTANCE, b(1), b"v"))
    before = snapshot(learner)
    with pytest.raises(ProtocolError, match="unknown acceptor"):
        learner.on_accepted(vote(42, b(1), b"v"))
    assert snapshot(learner) == before


def test_two_values_under_one_ballot_is_a_protocol_error(learner: Learner) -> None:
    learner.on_accepted(vote(1, b(2), b"v"))
    before = snapshot(learner)
    with pytest.raises(ProtocolError, match="two values"):
        learner.on_accepted(vote(2, b(2), b"w"))
    assert snapshot(learner) == before


def test_decide_with_the_zero_ballot_is_a_protocol_error(learner: Learner) -> None:
    before = snapshot(learner)
    with pytest.raises(ProtocolError):
        learner.on_decide(Decide(INSTANCE, ZERO_BALLOT, b"v"))
    assert snapshot(learner) == before


@pytest.mark.parametrize("msg", [vote(1, b(1), b"v", instance=0), Decide(0, b(1), b"v")])
def test_instance_zero_is_a_protocol_error(learner: Learner, msg: Accepted | Decide) -> None:
    before = snapshot(learner)
    with pytest.raises(ProtocolError):
        if isinstance(msg, Decide):
            learner.on_decide(msg)
        else:
            learner.on_accepted(msg)
    assert snapshot(learner) == before


def test_a_learner_needs_acceptors() -> None:
    with pytest.raises(ValueError):
        Learner(frozenset())
