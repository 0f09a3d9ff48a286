"""The proposer ("Paxos Made Simple", section 2.2, phases 1a and 2a; section 2.4
for progress).

The proposer is an object, so "stale or illegal input changes nothing" is
checked by snapshotting every attribute it has (including the private ones)
before the message and comparing after it.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

import pytest

from roles import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    Ballot,
    Chosen,
    Decide,
    GaveUp,
    Phase,
    Prepare,
    Promise,
    Proposer,
    ProposerConfig,
    ProtocolError,
    Reject,
    SendToAcceptors,
    SetTimer,
)

PID = 2
INSTANCE = 5
OWN = b"own value"
ACCEPTORS = frozenset({1, 2, 3})
CONFIG = ProposerConfig(phase_timeout=1.0, backoff_base=0.1, backoff_max=0.8)


class RecordingRandom:
    """A fake random source: records every draw and returns a fixed fraction
    of the requested range, so backoff delays are predictable."""

    def __init__(self, fraction: float = 0.5) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


def make(
    *,
    rng: RecordingRandom | None = None,
    acceptors: frozenset[int] = ACCEPTORS,
    deadline: float = 100.0,
    min_round: int = 0,
) -> Proposer:
    return Proposer(
        proposer_id=PID,
        instance=INSTANCE,
        value=OWN,
        acceptor_ids=acceptors,
        rng=rng or RecordingRandom(),
        deadline=deadline,
        config=CONFIG,
        min_round=min_round,
    )


def snapshot(proposer: Proposer) -> dict[str, Any]:
    """Every attribute of the proposer except its random source."""
    return {k: copy.deepcopy(v) for k, v in vars(proposer).items() if k != "_rng"}


def promise(
    acceptor_id: int,
    ballot: Ballot,
    accepted_ballot: Ballot = ZERO_BALLOT,
    value: bytes | None = None,
) -> Promise:
    return Promise(INSTANCE, ballot, acceptor_id, accepted_ballot, value)


def to_accepting(proposer: Proposer, now: float = 0.0) -> Ballot:
    """Start and collect promises from acceptors 1 and 2 (a majority of three)."""
    proposer.start(now)
    for aid in (1, 2):
        proposer.on_message(promise(aid, proposer.ballot), now)
    assert proposer.phase is Phase.ACCEPTING
    return proposer.ballot


# Phase 1a ---------------------------------------------------------------------


def test_start_broadcasts_prepare_for_the_first_ballot_and_arms_the_phase_timeout() -> None:
    proposer = make()
    assert proposer.start(10.0) == [
        SendToAcceptors(Prepare(INSTANCE, Ballot(1, PID))),
        SetTimer(11.0),
    ]
    assert proposer.phase is Phase.PREPARING
    assert proposer.ballot == Ballot(1, PID)
    assert proposer.attempts == 1


def test_first_ballot_is_above_min_round() -> None:
    """After a restart the caller passes the highest round it used before, so
    the proposer never reissues an old ballot with a different value."""
    proposer = make(min_round=7)
    effects = proposer.start(0.0)
    assert effects[0] == SendToAcceptors(Prepare(INSTANCE, Ballot(8, PID)))


def test_start_twice_is_a_protocol_error_and_changes_nothing() -> None:
    proposer = make()
    proposer.start(0.0)
    before = snapshot(proposer)
    with pytest.raises(ProtocolError, match="once"):
        proposer.start(0.5)
    assert snapshot(proposer) == before


# Phase 2a: choosing the value (P2c) -----------------------------------------


def test_majority_of_empty_promises_proposes_the_own_value() -> None:
    """P2c, section 2.2: if no acceptor in the quorum has accepted anything, the
    proposer is free to propose its own value."""
    proposer = make()
    proposer.start(0.0)
    ballot = proposer.ballot
    assert proposer.on_message(promise(1, ballot), 0.1) == []
    phase_after_one = proposer.phase
    effects = proposer.on_message(promise(3, ballot), 0.2)
    assert effects == [SendToAcceptors(Accept(INSTANCE, ballot, OWN)), SetTimer(1.2)]
    assert (phase_after_one, proposer.phase) == (Phase.PREPARING, Phase.ACCEPTING)


FIVE = frozenset({1, 2, 3, 4, 5})
REPORTS = [
    (1, Ballot(4, 1), b"low"),
    (2, Ballot(9, 3), b"highest"),
    (3, ZERO_BALLOT, None),
]


@pytest.mark.parametrize("order", list(itertools.permutations(REPORTS)), ids=str)
def test_adopts_the_value_of_the_highest_accepted_ballot_among_the_promises(
    order: tuple[tuple[int, Ballot, bytes | None], ...],
) -> None:
    """P2c, section 2.2: the value must be that of the highest-numbered proposal
    accepted by any acceptor of the quorum, whatever order promises arrive in."""
    proposer = make(acceptors=FIVE, min_round=10)
    proposer.start(0.0)
    effects = []
    for aid, accepted_ballot, value in order:
        effects = proposer.on_message(promise(aid, proposer.ballot, accepted_ballot, value), 0.1)
    assert effects[0] == SendToAcceptors(Accept(INSTANCE, proposer.ballot, b"highest"))


def test_highest_accepted_ballot_is_compared_by_proposer_id_within_a_round() -> None:
    proposer = make(min_round=10)
    proposer.start(0.0)
    proposer.on_message(promise(1, proposer.ballot, Ballot(9, 3), b"higher"), 0.1)
    effects = proposer.on_message(promise(2, proposer.ballot, Ballot(9, 1), b"lower"), 0.1)
    assert effects[0] == SendToAcceptors(Accept(INSTANCE, proposer.ballot, b"higher"))


def test_duplicate_promise_does_not_count_twice() -> None:
    proposer = make()
    proposer.start(0.0)
    proposer.on_message(promise(1, proposer.ballot), 0.1)
    before = snapshot(proposer)
    assert proposer.on_message(promise(1, proposer.ballot), 0.2) == []
    assert proposer.phase is Phase.PREPARING
    assert snapshot(proposer) == before


# Learning the outcome -------------------------------------------------------


def test_majority_of_accepted_chooses_the_own_value() -> None:
    proposer = make()
    ballot = to_accepting(proposer)
    assert proposer.on_message(Accepted(INSTANCE, ballot, 3, OWN), 0.3) == []
    effects = proposer.on_message(Accepted(INSTANCE, ballot, 1, OWN), 0.4)
    chosen = Chosen(Decide(INSTANCE, ballot, OWN), own_value_chosen=True)
    assert effects == [chosen]
    assert proposer.phase is Phase.CHOSEN
    assert proposer.outcome == chosen


def test_own_value_chosen_is_false_when_an_earlier_value_was_adopted() -> None:
    proposer = make(min_round=3)
    proposer.start(0.0)
    ballot = proposer.ballot
    proposer.on_message(promise(1, ballot, Ballot(2, 9), b"theirs"), 0.1)
    proposer.on_message(promise(2, ballot), 0.1)
    proposer.on_message(Accepted(INSTANCE, ballot, 1, b"theirs"), 0.2)
    effects = proposer.on_message(Accepted(INSTANCE, ballot, 2, b"theirs"), 0.2)
    assert effects == [Chosen(Decide(INSTANCE, ballot, b"theirs"), own_value_chosen=False)]


def test_duplicate_accepted_does_not_count_twice() -> None:
    proposer = make()
    ballot = to_accepting(proposer)
    proposer.on_message(Accepted(INSTANCE, ballot, 1, OWN), 0.3)
    before = snapshot(proposer)
    assert proposer.on_message(Accepted(INSTANCE, ballot, 1, OWN), 0.4) == []
    assert proposer.phase is Phase.ACCEPTING
    assert snapshot(proposer) == before


def test_accepted_for_a_value_the_ballot_never_carried_is_a_protocol_error() -> None:
    proposer = make()
    ballot = to_accepting(proposer)
    before = snapshot(proposer)
    with pytest.raises(ProtocolError, match="never carried"):
        proposer.on_message(Accepted(INSTANCE, ballot, 1, b"forged"), 0.3)
    assert snapshot(proposer) == before


def test_after_choosing_every_input_is_ignored() -> None:
    proposer = make()
    ballot = to_accepting(proposer)
    proposer.on_message(Accepted(INSTANCE, ballot, 1, OWN), 0.3)
    proposer.on_message(Accepted(INSTANCE, ballot, 2, OWN), 0.3)
    before = snapshot(proposer)
    assert proposer.on_message(Accepted(INSTANCE, ballot, 3, OWN), 0.4) == []
    assert proposer.on_message(Reject(INSTANCE, ballot, 3, Ballot(50, 1)), 0.4) == []
    assert proposer.on_timer(1000.0) == []
    assert snapshot(proposer) == before


# Stale, late and illegal replies ----------------------------------------------


def old_ballot_replies(old: Ballot) -> list[Promise | Accepted | Reject]:
    return [
        promise(3, old),
        Accepted(INSTANCE, old, 3, OWN),
        Reject(INSTANCE, old, 3, Ballot(old.round + 5, 1)),
    ]


@pytest.mark.parametrize("kind", range(3), ids=["promise", "accepted", "reject"])
def test_replies_for_an_earlier_ballot_are_ignored(kind: int) -> None:
    """Answers to an abandoned ballot say nothing about the current one."""
    proposer = make()
    proposer.start(0.0)
    old = proposer.ballot
    proposer.on_timer(1.0)  # phase timeout -> back off
    proposer.on_timer(10.0)  # back-off over -> next ballot
    assert proposer.ballot > old
    proposer.on_message(promise(1, proposer.ballot), 10.1)
    before = snapshot(proposer)
    assert proposer.on_message(old_ballot_replies(old)[kind], 10.2) == []
    assert snapshot(proposer) == before


def test_late_promise_after_phase_one_completed_is_ignored() -> None:
    proposer = make()
    ballot = to_accepting(proposer)
    before = snapshot(proposer)
    assert proposer.on_message(promise(3, ballot, Ballot(1, 1), b"too late"), 0.5) == []
    assert snapshot(proposer) == before


def test_late_replies_while_backing_off_are_ignored() -> None:
    proposer = make()
    proposer.start(0.0)
    ballot = proposer.ballot
    proposer.on_message(promise(1, ballot), 0.1)
    proposer.on_timer(1.0)  # phase timeout
    assert proposer.phase is Phase.BACKING_OFF
    before = snapshot(proposer)
    assert proposer.on_message(promise(2, ballot), 1.1) == []
    assert snapshot(proposer) == before


@pytest.mark.parametrize(
    "msg",
    [
        Promise(INSTANCE + 1, Ballot(1, PID), 1),
        Promise(INSTANCE, Ballot(1, PID), 99),
        Accepted(INSTANCE, Ballot(1, PID), 99, OWN),
        Reject(INSTANCE, Ballot(1, PID), 99, Ballot(9, 9)),
    ],
    ids=[
        "wrong-instance",
        "unknown-acceptor-promise",
        "unknown-acceptor-accepted",
        "unknown-reject",
    ],
)
def test_reply_for_another_instance_or_from_a_stranger_is_a_protocol_error(
    msg: Promise | Accepted | Reject,
) -> None:
    proposer = make()
    proposer.start(0.0)
    before = snapshot(proposer)
    with pytest.raises(ProtocolError):
        proposer.on_message(msg, 0.1)
    assert snapshot(proposer) == before


# Rejection and backoff (section 2.4: avoid duelling proposers) ---------------


def test_reject_with_a_higher_promise_backs_off_for_a_random_delay() -> None:
    rng = RecordingRandom(fraction=0.25)
    proposer = make(rng=rng)
    proposer.start(0.0)
    effects = proposer.on_message(Reject(INSTANCE, proposer.ballot, 1, Ballot(6, 9)), 0.5)
    # attempts == 1, so the cap is backoff_base * 2 == 0.2 and the delay 0.05.
    assert rng.calls == [(0.0, 0.2)]
    assert effects == [SetTimer(0.55)]
    assert proposer.phase is Phase.BACKING_OFF
    assert proposer.highest_round_seen == 6


def test_next_ballot_is_above_the_highest_round_seen() -> None:
    proposer = make()
    proposer.start(0.0)
    proposer.on_message(Reject(INSTANCE, proposer.ballot, 1, Ballot(6, 9)), 0.5)
    effects = proposer.on_timer(0.6)
    assert effects == [SendToAcceptors(Prepare(INSTANCE, Ballot(7, PID))), SetTimer(1.6)]
    assert proposer.ballot > Ballot(6, 9)
    assert proposer.phase is Phase.PREPARING
    assert proposer.attempts == 2


def test_reject_while_accepting_backs_off() -> None:
    proposer = make()
    ballot = to_accepting(proposer)
    effects = proposer.on_message(Reject(INSTANCE, ballot, 3, Ballot(4, 1)), 0.5)
    assert len(effects) == 1
    assert isinstance(effects[0], SetTimer)
    assert proposer.phase is Phase.BACKING_OFF


def test_reject_of_our_ballot_after_its_promise_is_ignored() -> None:
    """An acceptor refuses a retransmitted Prepare for the ballot it already
    promised us; the Reject carries our own ballot and means nothing."""
    rng = RecordingRandom()
    proposer = make(rng=rng)
    proposer.start(0.0)
    proposer.on_message(Promise(INSTANCE, proposer.ballot, 1), 0.05)
    before = snapshot(proposer)
    assert proposer.on_message(Reject(INSTANCE, proposer.ballot, 1, proposer.ballot), 0.1) == []
    assert snapshot(proposer) == before
    assert rng.calls == []


def test_reject_of_our_ballot_without_its_promise_is_a_preemption() -> None:
    """The log's leader in the same process uses the same proposer id, so its
    range promise can hold exactly our ballot: the acceptor refuses us and we
    never get its promise. Only a higher round can win; waiting out the phase
    timeout cost every Propose to the leading proposer a second (issue 14)."""
    proposer = make()
    proposer.start(0.0)
    ballot = proposer.ballot
    effects = proposer.on_message(Reject(INSTANCE, ballot, 1, ballot), 0.1)
    assert proposer.phase is Phase.BACKING_OFF
    (timer,) = effects
    assert isinstance(timer, SetTimer) and timer.at < 0.1 + proposer.config.phase_timeout
    effects = proposer.on_timer(timer.at)
    (prepare,) = [e.message for e in effects if isinstance(e, SendToAcceptors)]
    assert prepare.ballot > ballot


def test_reject_below_our_ballot_is_ignored() -> None:
    proposer = make()
    proposer.start(0.0)
    before = snapshot(proposer)
    lower = Reject(INSTANCE, proposer.ballot, 1, Ballot(0, 9))
    assert proposer.on_message(lower, 0.1) == []
    assert snapshot(proposer) == before


def test_duplicate_reject_while_backing_off_is_ignored() -> None:
    """Proposer.on_message promises that duplicate replies are ignored. A
    retransmitted Reject carries nothing new, so it must neither draw from the
    RNG nor move the timer already set by the first one."""
    rng = RecordingRandom()
    proposer = make(rng=rng)
    proposer.start(0.0)
    reject = Reject(INSTANCE, proposer.ballot, 1, Ballot(6, 9))
    proposer.on_message(reject, 0.5)
    before = snapshot(proposer)
    draws = len(rng.calls)
    assert proposer.on_message(reject, 0.55) == []
    assert len(rng.calls) == draws
    assert snapshot(proposer) == before


def test_backoff_cap_doubles_per_attempt_up_to_the_maximum() -> None:
    rng = RecordingRandom(fraction=1.0)
    proposer = make(rng=rng)
    now = 0.0
    proposer.start(now)
    for _ in range(5):
        now += 0.1
        (timer,) = proposer.on_message(
            Reject(INSTANCE, proposer.ballot, 1, Ballot(proposer.ballot.round + 1, 9)), now
        )
        assert isinstance(timer, SetTimer)
        now = timer.at
        proposer.on_timer(now)
    assert [cap for _, cap in rng.calls] == pytest.approx([0.2, 0.4, 0.8, 0.8, 0.8])
    assert all(low == 0.0 for low, _ in rng.calls)


# Timers -------------------------------------------------------------------------


def test_phase_one_timeout_backs_off_then_retries_with_a_higher_ballot() -> None:
    rng = RecordingRandom()
    proposer = make(rng=rng)
    proposer.start(0.0)
    first = proposer.ballot
    proposer.on_message(promise(1, first), 0.1)  # a minority only
    effects = proposer.on_timer(1.0)
    assert effects == [SetTimer(1.1)]
    assert rng.calls == [(0.0, 0.2)]
    assert proposer.phase is Phase.BACKING_OFF
    effects = proposer.on_timer(1.1)
    assert effects == [SendToAcceptors(Prepare(INSTANCE, Ballot(2, PID))), SetTimer(2.1)]
    assert proposer.ballot > first


def test_phase_two_timeout_backs_off_then_retries() -> None:
    proposer = make()
    ballot = to_accepting(proposer, now=0.0)
    assert proposer.on_timer(1.0) == [SetTimer(1.1)]
    assert proposer.phase is Phase.BACKING_OFF
    assert proposer.on_timer(1.1)[0] == SendToAcceptors(
        Prepare(INSTANCE, Ballot(ballot.round + 1, PID))
    )


@pytest.mark.parametrize("phase", ["preparing", "accepting", "backing_off", "not_started"])
def test_timer_call_before_the_timer_time_changes_nothing_but_says_when(phase: str) -> None:
    rng = RecordingRandom()
    proposer = make(rng=rng)
    if phase == "preparing":
        proposer.start(0.0)  # timer at 1.0
    elif phase == "accepting":
        to_accepting(proposer, now=0.0)  # timer at 1.0
    elif phase == "backing_off":
        proposer.start(0.0)
        proposer.on_timer(1.0)  # timer at 1.1
    before = snapshot(proposer)
    draws = len(rng.calls)
    assert proposer.on_timer(0.999) == [SetTimer(proposer._timer_at)]
    assert snapshot(proposer) == before
    assert len(rng.calls) == draws


# The deadline -------------------------------------------------------------------


def test_timers_never_reach_beyond_the_deadline() -> None:
    proposer = make(deadline=3.5)
    assert proposer.start(3.0)[-1] == SetTimer(3.5)


def test_gives_up_at_the_deadline() -> None:
    proposer = make(deadline=3.0)
    proposer.start(0.0)
    proposer.on_message(Reject(INSTANCE, proposer.ballot, 2, Ballot(8, 1)), 0.5)
    before_ballot = proposer.ballot
    effects = proposer.on_timer(3.0)
    assert len(effects) == 1
    gave_up = effects[0]
    assert isinstance(gave_up, GaveUp)
    assert gave_up.instance == INSTANCE
    assert gave_up.last_ballot == before_ballot
    assert "deadline" in gave_up.reason
    assert "preempted by 8.1" in gave_up.reason
    assert proposer.phase is Phase.GAVE_UP
    assert proposer.outcome == gave_up


def test_gives_up_at_the_deadline_even_if_the_phase_timeout_is_later() -> None:
    proposer = make(deadline=3.0)
    assert proposer.start(2.5) == [
        SendToAcceptors(Prepare(INSTANCE, Ballot(1, PID))),
        SetTimer(3.0),
    ]
    (gave_up,) = proposer.on_timer(3.0)
    assert isinstance(gave_up, GaveUp)
    assert gave_up.last_ballot == Ballot(1, PID)


def test_give_up_reason_does_not_deny_an_attempt_that_was_made() -> None:
    proposer = make(deadline=3.0)
    proposer.start(2.5)  # Prepare broadcast; the phase timeout is clamped to the deadline.
    (gave_up,) = proposer.on_timer(3.0)
    assert isinstance(gave_up, GaveUp)
    assert "no attempt made" not in gave_up.reason


def test_after_giving_up_every_input_is_ignored() -> None:
    proposer = make(deadline=2.0)
    proposer.start(0.0)
    ballot = proposer.ballot
    proposer.on_timer(2.0)
    before = snapshot(proposer)
    assert proposer.on_message(promise(1, ballot), 2.1) == []
    assert proposer.on_message(promise(2, ballot), 2.1) == []
    assert proposer.on_timer(50.0) == []
    assert snapshot(proposer) == before
    with pytest.raises(ProtocolError):
        proposer.start(3.0)


def test_never_started_proposer_gives_up_at_the_deadline() -> None:
    proposer = make(deadline=5.0)
    (gave_up,) = proposer.on_timer(5.0)
    assert gave_up == GaveUp(INSTANCE, "deadline passed: no attempt made", ZERO_BALLOT)


# Construction -------------------------------------------------------------------


@pytest.mark.parametrize(
    "kwargs",
    [
        {"phase_timeout": 0.0},
        {"backoff_base": 0.0},
        {"backoff_base": 0.5, "backoff_max": 0.4},
    ],
)
def test_invalid_timing_is_refused(kwargs: dict[str, float]) -> None:
    with pytest.raises(ValueError, match="invalid proposer timing"):
        ProposerConfig(**kwargs)


def test_instance_zero_is_a_protocol_error() -> None:
    with pytest.raises(ProtocolError):
        Proposer(
            proposer_id=1,
            instance=0,
            value=OWN,
            acceptor_ids=ACCEPTORS,
            rng=RecordingRandom(),
            deadline=1.0,
        )


def test_a_proposer_needs_acceptors() -> None:
    with pytest.raises(ValueError):
        make(acceptors=frozenset())


def test_a_timer_that_fires_early_is_told_when_again() -> None:
    """A caller whose timer fires before the proposer's time (asyncio fires
    timers up to its clock resolution early; or the caller kept an older
    time) must be told when to come back. On the old code ``on_timer``
    returned nothing and the driver, still holding the old time, waited 0 s
    and called again: a busy loop (the simulation's real-time guard stopped
    it after 12.6 million loop iterations at one virtual instant)."""
    proposer = make()
    (timer,) = [e for e in proposer.start(0.0) if isinstance(e, SetTimer)]
    assert proposer.on_timer(timer.at - 1e-12) == [SetTimer(timer.at)]
