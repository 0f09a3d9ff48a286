"""Property tests: the paper's invariants over generated inputs.

* Ballots are totally ordered and a successor is strictly greater (section 2.2).
* Any two majorities intersect (section 2.1).
* An acceptor, fed any sequence of Prepare/Accept, keeps P1a: it never accepts
  below a promise, its promise never goes down, accepted <= promised, and an
  illegal message leaves its state exactly as it was.
* The proposer's phase 2 value satisfies P2c for any set of promises, and its
  ballots only go up whatever replies and timers it is fed.
* The learner's answer does not depend on the order votes arrive in.
"""

from __future__ import annotations

import itertools

from hypothesis import given, settings
from hypothesis import strategies as st

from roles import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Chosen,
    GaveUp,
    Learned,
    Learner,
    Prepare,
    Promise,
    Proposer,
    ProposerConfig,
    ProtocolError,
    Reject,
    SendToAcceptors,
    SetTimer,
    majority,
)
from roles.ballot import MAX_BALLOT_FIELD

fields = st.integers(min_value=0, max_value=MAX_BALLOT_FIELD)
ballots = st.builds(Ballot, fields, fields)
small_ballots = st.builds(Ballot, st.integers(0, 6), st.integers(0, 3))


# Ballots ------------------------------------------------------------------------


@given(ballots, ballots)
def test_ballot_order_is_total_and_lexicographic(a: Ballot, b: Ballot) -> None:
    assert [a < b, a == b, b < a].count(True) == 1
    assert (a < b) == ((a.round, a.proposer_id) < (b.round, b.proposer_id))
    assert (a <= b) == (a < b or a == b)


@given(small_ballots, small_ballots, small_ballots)
def test_ballot_order_is_transitive(a: Ballot, b: Ballot, c: Ballot) -> None:
    if a <= b <= c:
        assert a <= c


@given(ballots)
def test_zero_ballot_is_the_minimum(ballot: Ballot) -> None:
    assert ballot >= ZERO_BALLOT


@given(
    st.builds(Ballot, st.integers(0, 2**62), fields),
    st.integers(0, 2**62),
    st.integers(0, 2**62),
)
def test_successor_is_strictly_greater(ballot: Ballot, proposer_id: int, at_least: int) -> None:
    nxt = ballot.successor(proposer_id, at_least)
    assert nxt > ballot
    assert nxt.round > at_least
    assert not nxt.is_zero
    # It is above every ballot of any proposer in the rounds seen so far.
    assert nxt > Ballot(max(ballot.round, at_least), MAX_BALLOT_FIELD)


# Quorums ----------------------------------------------------------------------


@given(st.data(), st.integers(1, 9))
def test_any_two_majorities_intersect(data: st.DataObject, size: int) -> None:
    acceptors = list(range(1, size + 1))
    quorum = st.lists(
        st.sampled_from(acceptors), min_size=majority(size), max_size=size, unique=True
    )
    q1, q2 = data.draw(quorum), data.draw(quorum)
    assert set(q1) & set(q2)


# The acceptor ----------------------------------------------------------------------

ACCEPTOR_ID = 1


def value_of(ballot: Ballot) -> bytes:
    return f"value-{ballot}".encode()


@st.composite
def acceptor_messages(draw: st.DrawFn) -> Prepare | Accept:
    ballot = draw(small_ballots)
    instance = draw(st.sampled_from([1, 1, 1, 1, 0]))
    if draw(st.booleans()):
        return Prepare(instance, ballot)
    # Mostly the ballot's own value; sometimes a second value for the same ballot,
    # which a correct proposer never sends.
    value = value_of(ballot) if draw(st.integers(0, 9)) else b"forged"
    return Accept(instance, ballot, value)


@settings(max_examples=300)
@given(st.lists(acceptor_messages(), max_size=40))
def test_acceptor_invariants_hold_for_any_message_sequence(
    messages: list[Prepare | Accept],
) -> None:
    acceptor = Acceptor(ACCEPTOR_ID)
    state = AcceptorState()
    for msg in messages:
        old = state
        illegal = msg.ballot.is_zero or msg.instance < 1
        conflicting = (
            isinstance(msg, Accept)
            and msg.ballot >= old.promised_ballot
            and msg.ballot == old.accepted_ballot
            and msg.value != old.accepted_value
        )
        try:
            if isinstance(msg, Prepare):
                step = acceptor.on_prepare(old, msg)
            else:
                step = acceptor.on_accept(old, msg)
        except ProtocolError:
            assert illegal or conflicting, msg
            continue  # the caller keeps ``old``, which nothing could have changed
        assert not illegal and not conflicting, msg
        new, reply = step.state, step.reply

        assert new.accepted_ballot <= new.promised_ballot
        assert new.promised_ballot >= old.promised_ballot, "a promise was withdrawn"
        assert new.accepted_ballot >= old.accepted_ballot
        assert step.persist == (new != old)
        assert reply.instance == msg.instance
        assert reply.acceptor_id == ACCEPTOR_ID
        assert reply.ballot == msg.ballot

        if isinstance(reply, Promise):
            # Section 2.2 phase 1b: only above every earlier promise, reporting
            # the highest proposal accepted so far.
            assert isinstance(msg, Prepare)
            assert msg.ballot > old.promised_ballot
            assert (reply.accepted_ballot, reply.accepted_value) == (
                old.accepted_ballot,
                old.accepted_value,
            )
            assert new == AcceptorState(msg.ballot, old.accepted_ballot, old.accepted_value)
        elif isinstance(reply, Accepted):
            # P1a: accept unless a higher Prepare was promised.
            assert isinstance(msg, Accept)
            assert msg.ballot >= old.promised_ballot
            assert reply.value == msg.value
            assert new == AcceptorState(msg.ballot, msg.ballot, msg.value)
        else:
            assert isinstance(reply, Reject)
            if isinstance(msg, Prepare):
                assert msg.ballot <= old.promised_ballot
            else:
                assert msg.ballot < old.promised_ballot
            assert reply.promised_ballot == old.promised_ballot
            assert new is old
            assert not step.persist
        state = new


# The proposer ----------------------------------------------------------------------

PID = 4
FIVE = frozenset({1, 2, 3, 4, 5})


class FixedRandom:
    def __init__(self, fraction: float) -> None:
        self.fraction = fraction

    def uniform(self, a: float, b: float) -> float:
        return a + (b - a) * self.fraction


accepted_reports = st.dictionaries(
    st.sampled_from(sorted(FIVE)),
    st.one_of(st.just(ZERO_BALLOT), st.builds(Ballot, st.integers(1, 9), st.integers(1, 5))),
    min_size=1,
)


@settings(max_examples=300)
@given(accepted_reports, st.data())
def test_phase_two_value_is_the_value_of_the_highest_reported_proposal(
    reports: dict[int, Ballot], data: st.DataObject
) -> None:
    """P2c: the value proposed in phase 2 is the value of the highest-numbered
    proposal among the promises of the quorum, or the proposer's own value.
    Each acceptor has one answer; it may arrive several times, in any order."""
    arrivals = data.draw(st.lists(st.sampled_from(sorted(reports)), min_size=1, max_size=12))
    proposer = Proposer(
        proposer_id=PID,
        instance=1,
        value=b"own",
        acceptor_ids=FIVE,
        rng=FixedRandom(0.5),
        deadline=100.0,
        min_round=10,
    )
    proposer.start(0.0)
    counted: set[int] = set()
    effects: list[object] = []
    for aid in arrivals:
        accepted_ballot = reports[aid]
        value = None if accepted_ballot.is_zero else value_of(accepted_ballot)
        msg = Promise(1, proposer.ballot, aid, accepted_ballot, value)
        effects = list(proposer.on_message(msg, 0.1))
        counted.add(aid)
        if effects:
            break
    if len(counted) < majority(len(FIVE)):
        assert effects == []
        return
    assert len(counted) == majority(len(FIVE))
    highest = max(reports[aid] for aid in counted)
    expected = b"own" if highest.is_zero else value_of(highest)
    assert effects[0] == SendToAcceptors(Accept(1, proposer.ballot, expected))


@st.composite
def proposer_inputs(draw: st.DrawFn) -> list[tuple[str, int, int, int]]:
    """(kind, acceptor_id, ballot-age, promised round offset); interpreted
    against the proposer's state when fed, so that replies stay plausible."""
    return draw(
        st.lists(
            st.tuples(
                st.sampled_from(["promise", "accepted", "reject", "timer", "timer"]),
                st.sampled_from(sorted(FIVE)),
                st.integers(0, 2),
                st.integers(-1, 3),
            ),
            max_size=60,
        )
    )


@settings(max_examples=300)
@given(proposer_inputs(), st.floats(0.0, 1.0))
def test_proposer_ballots_only_go_up_and_timers_stay_within_the_deadline(
    inputs: list[tuple[str, int, int, int]], fraction: float
) -> None:
    deadline = 20.0
    proposer = Proposer(
        proposer_id=PID,
        instance=1,
        value=b"own",
        acceptor_ids=FIVE,
        rng=FixedRandom(fraction),
        deadline=deadline,
        config=ProposerConfig(phase_timeout=1.0, backoff_base=0.1, backoff_max=1.0),
    )
    now = 0.0
    timer_at = deadline
    past: list[Ballot] = []
    outcomes: list[Chosen | GaveUp] = []
    accepted_value: bytes | None = None

    def apply(effects: list[object]) -> None:
        nonlocal timer_at, accepted_value
        if proposer.outcome is not None and outcomes:
            assert effects == [], "a finished proposer acted"
        for effect in effects:
            if isinstance(effect, SendToAcceptors) and isinstance(effect.message, Prepare):
                assert not past or effect.message.ballot > past[-1]
                assert effect.message.ballot.proposer_id == PID
                past.append(effect.message.ballot)
            elif isinstance(effect, SendToAcceptors) and isinstance(effect.message, Accept):
                assert effect.message.ballot == past[-1]
                accepted_value = effect.message.value
            elif isinstance(effect, SetTimer):
                assert now <= effect.at <= deadline
                timer_at = effect.at
            else:
                assert isinstance(effect, Chosen | GaveUp)
                outcomes.append(effect)

    apply(list(proposer.start(now)))
    for kind, aid, age, offset in inputs:
        ballot = past[max(0, len(past) - 1 - age)]
        if kind == "timer":
            now = max(now, timer_at)
            apply(list(proposer.on_timer(now)))
            continue
        now += 0.01
        if kind == "promise":
            msg: Promise | Accepted | Reject = Promise(1, ballot, aid)
        elif kind == "accepted":
            if ballot != proposer.ballot or accepted_value is None:
                continue  # an acceptor only accepts what was sent to it
            msg = Accepted(1, ballot, aid, accepted_value)
        else:
            msg = Reject(1, ballot, aid, Ballot(max(ballot.round + offset, 1), 1))
        apply(list(proposer.on_message(msg, now)))
    assert len(outcomes) <= 1
    assert proposer.highest_round_seen >= proposer.ballot.round


# The learner ---------------------------------------------------------------------


votes = st.lists(
    st.tuples(st.sampled_from([1, 2, 3]), st.builds(Ballot, st.integers(1, 4), st.just(1))),
    max_size=12,
)


@settings(max_examples=300)
@given(votes, st.randoms(use_true_random=False))
def test_learner_decides_exactly_when_some_ballot_has_a_majority(
    cast: list[tuple[int, Ballot]], rnd: object
) -> None:
    """Section 2.3: the value is learned once one ballot has a majority, in any
    arrival order, and the first ballot to complete a majority is reported."""
    acceptors = frozenset({1, 2, 3})
    order = list(cast)
    rnd.shuffle(order)  # type: ignore[attr-defined]
    learner = Learner(acceptors)
    seen: dict[Ballot, set[int]] = {}
    expected: Learned | None = None
    for aid, ballot in order:
        got = learner.on_accepted(Accepted(1, ballot, aid, b"v"))
        seen.setdefault(ballot, set()).add(aid)
        if expected is None and len(seen[ballot]) >= majority(len(acceptors)):
            expected = Learned(1, ballot, b"v")
        assert got == expected
    assert learner.decision(1) == expected
    by_ballot = {ballot for _, ballot in cast}
    has_majority = any(len({a for a, b in cast if b == ballot}) >= 2 for ballot in by_ballot)
    assert (learner.decision(1) is not None) == has_majority


@given(st.permutations(list(itertools.product([1, 2, 3], [Ballot(1, 1), Ballot(2, 2)]))))
def test_learner_never_mixes_up_a_safe_history(order: list[tuple[int, Ballot]]) -> None:
    """Two ballots that carry the same value (as P2c guarantees once a value is
    chosen): whatever the order, the value learned is that value."""
    learner = Learner(frozenset({1, 2, 3}))
    for aid, ballot in order:
        learner.on_accepted(Accepted(1, ballot, aid, b"v"))
    decision = learner.decision(1)
    assert decision is not None
    assert decision.value == b"v"
