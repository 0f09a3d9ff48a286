"""The Multi-Paxos leader in phase 2, and stepping down ("Paxos Made Simple", section 3).

Once elected, the leader runs only phase 2, with many instances in flight at
once (a bounded window) and commands batched into instances. "If two
proposers both think they are the leader", safety holds anyway: a higher
ballot deposes the leader, and what it had in flight has an unknown outcome.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable
from typing import Any

import pytest

from roles import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    AnswerHeartbeat,
    Assigned,
    Ballot,
    Chosen,
    Decide,
    Heartbeat,
    Leader,
    LeaderConfig,
    OutcomeUnknown,
    PrepareRange,
    Reject,
    Rejected,
    Role,
    SendHeartbeat,
    SendToAcceptors,
    SetTimer,
    SteppedDown,
)
from tests.unit.leader_support import (
    CONFIG,
    PID,
    SEEN,
    Encoder,
    accepts,
    b,
    campaign_above,
    choose,
    elect,
    leader_with_work,
    make,
    of,
    promise,
    snapshot,
    submit_many,
)

# Phase 2: pipelining and batching ----------------------------------------------------


def test_a_command_goes_out_at_once_in_the_next_instance() -> None:
    encoder = Encoder()
    leader = make(encoder=encoder)
    elect(leader)
    effects = leader.submit(10, b"x", 0.0)
    assert of(Assigned, effects) == [Assigned(1, (10,))]
    assert of(SendToAcceptors, effects) == [SendToAcceptors(Accept(1, b(1), b"x"))]
    assert encoder.calls == [[b"x"]]
    assert leader.next_instance == 2


def test_a_majority_of_accepted_for_our_ballot_chooses_the_instance() -> None:
    leader = make()
    elect(leader)
    leader.submit(10, b"x", 0.0)
    assert leader.on_accepted(Accepted(1, b(1), 3, b"x"), 0.1) == []
    effects = leader.on_accepted(Accepted(1, b(1), 1, b"x"), 0.1)
    assert effects[0] == Chosen(Decide(1, b(1), b"x"), own_value_chosen=True, tokens=(10,))
    chosen = effects[0]
    assert isinstance(chosen, Chosen)
    assert (chosen.instance, chosen.ballot, chosen.value) == (1, b(1), b"x")
    assert (leader.chosen_through, leader.in_flight) == (1, 0)


@pytest.mark.parametrize(
    "stale",
    [
        Accepted(1, Ballot(1, 2), 3, b"x"),  # another proposer's ballot
        Accepted(1, b(1), 1, b"x"),  # a duplicate
        Accepted(7, b(1), 3, b"x"),  # an instance we never proposed
    ],
    ids=["other-ballot", "duplicate", "unknown-instance"],
)
def test_stale_or_duplicate_accepted_is_ignored(stale: Accepted) -> None:
    leader = make()
    elect(leader)
    leader.submit(10, b"x", 0.0)
    leader.on_accepted(Accepted(1, b(1), 1, b"x"), 0.1)
    before = snapshot(leader)
    assert leader.on_accepted(stale, 0.2) == []
    assert snapshot(leader) == before


def test_accepted_for_an_instance_already_chosen_is_ignored() -> None:
    leader = make()
    elect(leader)
    leader.submit(10, b"x", 0.0)
    choose(leader, 1)
    before = snapshot(leader)
    assert leader.on_accepted(Accepted(1, b(1), 3, b"x"), 0.2) == []
    assert snapshot(leader) == before


def test_the_window_bounds_the_instances_in_phase_2() -> None:
    leader = make()
    elect(leader)
    effects = submit_many(leader, range(1, 5))
    assert [i for i, _ in accepts(effects)] == [1, 2, 3, 4]
    effects = submit_many(leader, range(5, 11))
    assert accepts(effects) == []
    assert (leader.in_flight, leader.queued, leader.next_instance) == (4, 6, 5)


def test_commands_queued_behind_a_full_window_share_one_instance() -> None:
    encoder = Encoder()
    leader = make(encoder=encoder)
    elect(leader)
    submit_many(leader, range(1, 5))
    submit_many(leader, range(5, 11))
    effects = choose(leader, 1)
    assert of(Assigned, effects) == [Assigned(5, (5, 6, 7))]
    assert accepts(effects) == [(5, b"cmd5|cmd6|cmd7")]
    assert encoder.calls[-1] == [b"cmd5", b"cmd6", b"cmd7"]
    assert leader.queued == 3


def test_chosen_through_stays_contiguous_and_the_window_slides_with_it() -> None:
    """A stuck first instance holds the window (and memory) in place, however
    many instances after it are chosen."""
    leader = make()
    elect(leader)
    submit_many(leader, range(1, 5))
    submit_many(leader, range(5, 20))
    for instance in (4, 2, 3):
        assert accepts(choose(leader, instance)) == []
    assert leader.chosen_through == 0
    effects = choose(leader, 1)
    assert leader.chosen_through == 4
    assert [i for i, _ in accepts(effects)] == [5, 6, 7, 8]


def test_an_instance_without_quorum_is_sent_again_to_the_silent_acceptors() -> None:
    leader = make()
    elect(leader, now=0.0)
    leader.submit(1, b"x", 0.0)
    leader.on_accepted(Accepted(1, b(1), 2, b"x"), 0.1)
    effects = leader.on_timer(0.5)
    resent = SendToAcceptors(Accept(1, b(1), b"x"), frozenset({1, 3}))
    assert resent in effects
    assert of(SendHeartbeat, effects) != []


def test_a_leader_that_cannot_reach_a_quorum_steps_down() -> None:
    leader = make()
    elect(leader, now=0.0)
    submit_many(leader, range(1, 5))  # in flight
    submit_many(leader, range(5, 8))  # queued
    leader.on_timer(0.5)
    leader.on_timer(1.0)
    effects = leader.on_timer(1.5)
    reason = "instance 1 has no quorum for 1.1 after 2 retransmissions"
    assert effects[:3] == [
        SteppedDown(None, reason),
        Rejected((5, 6, 7), None, f"stepped down: {reason}"),
        OutcomeUnknown((1, 2, 3, 4), f"stepped down: {reason}"),
    ]
    assert leader.role is Role.FOLLOWER
    assert (leader.in_flight, leader.queued) == (0, 0)


def test_heartbeats_go_out_every_interval_with_chosen_through() -> None:
    leader = make()
    elect(leader, now=0.0)
    leader.submit(1, b"x", 0.0)
    choose(leader, 1, now=0.05)
    effects = leader.on_timer(0.1)
    assert of(SendHeartbeat, effects) == [SendHeartbeat(Heartbeat(b(1), PID, 1))]
    assert SetTimer(0.2) in effects
    assert not of(SendHeartbeat, leader.on_timer(0.15))


def test_the_queue_is_bounded() -> None:
    leader = make()
    elect(leader)
    submit_many(leader, range(1, 5 + CONFIG.max_queued))
    before = snapshot(leader)
    assert leader.submit(99, b"x", 0.0) == [Rejected((99,), PID, "the leader's queue is full")]
    assert snapshot(leader) == before


def test_per_instance_bookkeeping_is_dropped_once_chosen() -> None:
    leader = make(config=LeaderConfig(window=4, max_batch=3))
    elect(leader)
    submit_many(leader, range(1, 41))  # 4 alone, then 12 batches of 3
    instance = 1
    while leader.in_flight:
        choose(leader, instance)
        instance += 1
    assert leader.chosen_through == leader.next_instance - 1 == 16
    pipeline = leader._pipeline
    left = (pipeline.queue, pipeline.in_flight, pipeline.tokens, leader._chosen.above)
    assert left == (deque(), {}, set(), set())


def test_commands_that_arrive_together_share_an_instance() -> None:
    """One Append's commands are queued before the pipeline fills, so they go
    out as one batch (up to max_batch) even though the window has room."""
    leader = make()
    elect(leader)
    effects = leader.submit_many([(1, b"a"), (2, b"b"), (3, b"c"), (4, b"d")], 0.0)
    assert [a.tokens for a in of(Assigned, effects)] == [(1, 2, 3), (4,)]
    assert accepts(effects) == [(1, b"a|b|c"), (2, b"d")]


# Stepping down ("two proposers both think they are the leader", section 3) -------------


@pytest.mark.parametrize(
    "depose",
    [
        lambda leader: leader.on_reject(Reject(2, b(1), 3, Ballot(9, 3)), 1.0),
        lambda leader: leader.on_heartbeat(Heartbeat(Ballot(9, 3), 3, 0), 1.0),
        lambda leader: leader.on_heartbeat_reply(3, Ballot(9, 3), 1.0),
    ],
    ids=["reject", "heartbeat", "heartbeat-reply"],
)
def test_a_higher_ballot_deposes_the_leader(depose: Callable[[Leader], list[Any]]) -> None:
    """Queued commands were never proposed: safe to send elsewhere. Assigned
    ones may still be chosen by the next leader: their outcome is unknown."""
    leader = leader_with_work()
    effects = depose(leader)
    stepped = of(SteppedDown, effects)
    assert len(stepped) == 1 and stepped[0].leader_hint == 3
    assert [(r.tokens, r.leader_hint) for r in of(Rejected, effects)] == [((5, 6), 3)]
    assert [u.tokens for u in of(OutcomeUnknown, effects)] == [(1, 2, 3, 4)]
    assert (leader.role, leader.ballot, leader.leader_id) == (Role.FOLLOWER, ZERO_BALLOT, 3)
    assert of(SetTimer, effects) == [SetTimer(2.5)]
    # Late answers to the old ballot change nothing now.
    before = snapshot(leader)
    assert leader.on_accepted(Accepted(1, b(1), 1, b"cmd1"), 1.1) == []
    assert snapshot(leader) == before
    assert leader.submit(7, b"x", 1.2) == [Rejected((7,), 3, "proposer 1 is not leader")]


def test_a_deposed_leader_campaigns_above_the_ballot_that_deposed_it() -> None:
    leader = leader_with_work()
    leader.on_reject(Reject(2, b(1), 3, Ballot(9, 3)), 1.0)
    assert leader.on_timer(2.5)[0] == SendToAcceptors(PrepareRange(1, b(10)))


def leader_above_seen() -> Leader:
    """A leader with ballot 4.1, elected after seeing 3.2."""
    leader = make()
    ballot = campaign_above(leader)
    leader.on_promise_range(promise(1, ballot), 0.1)
    leader.on_promise_range(promise(2, ballot), 0.1)
    submit_many(leader, range(1, 7))
    return leader


@pytest.mark.parametrize("highest", [b(4), SEEN, Ballot(3, 3), ZERO_BALLOT], ids=str)
def test_a_heartbeat_reply_not_above_our_ballot_changes_nothing(highest: Ballot) -> None:
    leader = leader_above_seen()
    before = snapshot(leader)
    assert leader.on_heartbeat_reply(2, highest, 0.5) == []
    assert snapshot(leader) == before


def test_a_leader_tells_a_stale_leader_that_it_was_replaced() -> None:
    leader = leader_above_seen()
    before = snapshot(leader)
    assert leader.on_heartbeat(Heartbeat(Ballot(3, 3), 3, 0), 0.5) == [AnswerHeartbeat(3, b(4))]
    assert snapshot(leader) == before
