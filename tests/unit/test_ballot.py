"""Ballots (proposal numbers) and majority quorums.

"Paxos Made Simple", section 2.2: proposals are numbered from a totally ordered
set, and different proposals get different numbers ("each proposer [is
assigned] a disjoint set of numbers", section 2.5). Section 2.1: any two
majorities of one acceptor set have at least one acceptor in common.
"""

from __future__ import annotations

import dataclasses

import pytest

from roles import ZERO_BALLOT, Ballot, majority
from roles.ballot import MAX_BALLOT_FIELD
from roles.quorum import is_quorum


def test_ballots_order_by_round_then_proposer_id() -> None:
    assert Ballot(1, 9) < Ballot(2, 1)
    assert Ballot(2, 1) < Ballot(2, 2)
    assert Ballot(3, 3) == Ballot(3, 3)
    assert sorted([Ballot(2, 2), Ballot(1, 3), Ballot(2, 1)]) == [
        Ballot(1, 3),
        Ballot(2, 1),
        Ballot(2, 2),
    ]


def test_two_proposers_never_issue_the_same_ballot() -> None:
    """Section 2.5: disjoint numbers per proposer make every proposal unique."""
    assert Ballot(4, 1) != Ballot(4, 2)
    assert Ballot(4, 1).successor(1) != Ballot(4, 1).successor(2)


def test_zero_ballot_is_below_every_issued_ballot() -> None:
    assert ZERO_BALLOT.is_zero
    assert Ballot(0, 0) == ZERO_BALLOT
    assert Ballot(1, 0) > ZERO_BALLOT
    assert Ballot.successor(ZERO_BALLOT, proposer_id=0) > ZERO_BALLOT
    assert not Ballot(1, 0).is_zero


def test_round_zero_is_zero_whatever_the_proposer() -> None:
    """Round 0 is never issued, so any ballot in it means "none"."""
    assert Ballot(0, 7).is_zero


@pytest.mark.parametrize(
    ("ballot", "proposer_id", "at_least_round", "expected"),
    [
        (ZERO_BALLOT, 3, 0, Ballot(1, 3)),
        (Ballot(1, 3), 3, 0, Ballot(2, 3)),
        (Ballot(1, 3), 3, 7, Ballot(8, 3)),
        (Ballot(9, 3), 3, 7, Ballot(10, 3)),
        # Another proposer's ballot: the successor is above it and ours.
        (Ballot(5, 9), 2, 0, Ballot(6, 2)),
    ],
)
def test_successor(ballot: Ballot, proposer_id: int, at_least_round: int, expected: Ballot) -> None:
    successor = ballot.successor(proposer_id, at_least_round)
    assert successor == expected
    assert successor > ballot
    assert successor.round > at_least_round
    assert successor.proposer_id == proposer_id


@pytest.mark.parametrize(
    ("round_", "proposer_id"),
    [(-1, 0), (0, -1), (MAX_BALLOT_FIELD + 1, 0), (0, MAX_BALLOT_FIELD + 1)],
)
def test_fields_must_fit_a_signed_64_bit_column(round_: int, proposer_id: int) -> None:
    with pytest.raises(ValueError, match="ballot fields"):
        Ballot(round_, proposer_id)


def test_largest_field_values_are_allowed() -> None:
    assert Ballot(MAX_BALLOT_FIELD, MAX_BALLOT_FIELD) > Ballot(MAX_BALLOT_FIELD, 0)


def test_ballots_are_immutable() -> None:
    ballot = Ballot(1, 1)
    with pytest.raises(dataclasses.FrozenInstanceError):
        ballot.round = 2  # type: ignore[misc]
    assert ballot == Ballot(1, 1)


def test_ballot_str_is_round_dot_proposer() -> None:
    assert str(Ballot(12, 3)) == "12.3"


@pytest.mark.parametrize(("size", "quorum"), [(1, 1), (2, 2), (3, 2), (4, 3), (5, 3), (7, 4)])
def test_majority(size: int, quorum: int) -> None:
    assert majority(size) == quorum
    # Two quorums always overlap (section 2.1): 2 * quorum > size.
    assert 2 * quorum > size


def test_majority_of_nothing_is_an_error() -> None:
    with pytest.raises(ValueError):
        majority(0)


def test_is_quorum_counts_only_distinct_known_acceptors() -> None:
    acceptors = frozenset({1, 2, 3})
    assert is_quorum([1, 2], acceptors)
    assert not is_quorum([1], acceptors)
    assert not is_quorum([1, 1, 1], acceptors)
    assert not is_quorum([1, 7, 8], acceptors)
