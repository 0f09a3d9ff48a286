"""The Multi-Paxos leader with pre-vote.

With pre-vote, an election timeout first asks the acceptors whether they
still hear from a leader, and only raises the round when a majority does
not, so a follower cut off from the leader cannot depose a working one.
"""

from __future__ import annotations

import dataclasses

import pytest

from roles import (
    ZERO_BALLOT,
    AskLeaderContact,
    Heartbeat,
    Leader,
    LeaderEffect,
    PrepareRange,
    ProtocolError,
    Role,
    SendToAcceptors,
    SteppedDown,
)
from tests.unit.leader_support import CONFIG, PID, T, b, make, of, snapshot

# Pre-vote -----------------------------------------------------------------------

PRE_VOTE = dataclasses.replace(CONFIG, pre_vote=True)


def timeout_fires(leader: Leader) -> list[LeaderEffect]:
    """Advance to the leader's election timer (1.5 T with RecordingRandom) and fire it."""
    return leader.on_timer(leader._election.at)


def test_pre_vote_asks_the_acceptors_before_raising_the_round() -> None:
    leader = make(config=PRE_VOTE)
    leader.start(0.0)
    effects = timeout_fires(leader)
    assert of(AskLeaderContact, effects) == [AskLeaderContact(1)]
    assert of(SendToAcceptors, effects) == []
    assert leader.role is Role.FOLLOWER
    assert leader.highest_ballot_seen == ZERO_BALLOT
    now = leader._election.at - 0.1
    # Acceptor 1 has never accepted anything; acceptor 2 last accepted from us.
    assert leader.on_leader_contact(1, 1, None, 0.0, now) == []
    effects = leader.on_leader_contact(2, 1, PID, 0.01, now)
    assert of(SendToAcceptors, effects) == [SendToAcceptors(PrepareRange(1, b(1)))]
    assert leader.role is Role.CANDIDATE


def test_a_working_leader_seen_by_a_majority_keeps_a_cut_off_follower_from_campaigning() -> None:
    """What the pre-vote is for: a proposer that misses the heartbeats (cut off,
    or one-way) never raises its round while the acceptors hear from a leader,
    so it cannot depose that leader when the network heals."""
    leader = make(config=PRE_VOTE)
    leader.start(0.0)
    for seq in range(1, 6):
        effects = timeout_fires(leader)
        assert of(AskLeaderContact, effects) == [AskLeaderContact(seq)]
        now = leader._election.at - 0.1
        fresh = T / 2  # proposer 2 had a value accepted half a timeout ago
        for aid in (1, 2, 3):
            assert leader.on_leader_contact(aid, seq, 2, fresh, now) == []
    assert leader.role is Role.FOLLOWER
    assert leader.highest_ballot_seen == ZERO_BALLOT  # five rounds of asking, no ballot
    assert leader.leader_id == 2  # learnt as a hint for redirects


def test_no_answers_no_campaign_and_a_stale_leader_is_granted() -> None:
    leader = make(config=PRE_VOTE)
    leader.start(0.0)
    timeout_fires(leader)  # nobody answers: an isolated proposer
    effects = timeout_fires(leader)
    assert of(AskLeaderContact, effects) == [AskLeaderContact(2)]
    assert leader.highest_ballot_seen == ZERO_BALLOT
    now = leader._election.at - 0.1
    # Answers to the first round are stale; contacts older than T are grants.
    assert leader.on_leader_contact(1, 1, None, 0.0, now) == []
    assert leader.on_leader_contact(2, 1, None, 0.0, now) == []
    assert leader.role is Role.FOLLOWER
    assert leader.on_leader_contact(1, 2, 2, T, now) == []
    effects = leader.on_leader_contact(3, 2, 2, 5 * T, now)
    assert leader.role is Role.CANDIDATE
    assert of(SendToAcceptors, effects) == [SendToAcceptors(PrepareRange(1, b(1)))]


def test_a_heartbeat_ends_the_pre_vote() -> None:
    leader = make(config=PRE_VOTE)
    leader.start(0.0)
    timeout_fires(leader)
    now = leader._election.at - 0.1
    leader.on_heartbeat(Heartbeat(b(1, 2), 2, 0), now)
    before = snapshot(leader)
    assert leader.on_leader_contact(1, 1, None, 0.0, now) == []
    assert leader.on_leader_contact(2, 1, None, 0.0, now) == []
    assert leader.role is Role.FOLLOWER
    assert snapshot(leader) == before


def test_a_failed_phase_1_goes_back_to_asking() -> None:
    leader = make(config=PRE_VOTE)
    leader.start(0.0)
    timeout_fires(leader)
    now = leader._election.at - 0.1
    leader.on_leader_contact(1, 1, None, 0.0, now)
    leader.on_leader_contact(2, 1, None, 0.0, now)
    assert leader.role is Role.CANDIDATE
    effects = leader.on_timer(now + CONFIG.phase_timeout)
    assert of(SteppedDown, effects) and leader.role is Role.FOLLOWER
    effects = timeout_fires(leader)
    assert of(AskLeaderContact, effects) == [AskLeaderContact(2)]
    assert of(SendToAcceptors, effects) == []


def test_malformed_leader_contacts_are_protocol_errors() -> None:
    leader = make(config=PRE_VOTE)
    leader.start(0.0)
    timeout_fires(leader)
    before = snapshot(leader)
    for args in ((9, 1, None, 0.0), (1, 1, -1, 0.0), (1, 1, 2, -0.5), (1, 1, 2, float("nan"))):
        with pytest.raises(ProtocolError):
            leader.on_leader_contact(*args, 0.0)
    assert snapshot(leader) == before
