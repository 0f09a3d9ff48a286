"""The acceptor's range promise ("Paxos Made Simple", section 3).

Multi-Paxos runs phase 1 once for every instance from n upward: an acceptor
answers ``PrepareRange(n, b)`` with one promise for all of them and reports
what it has accepted there. The promise is a :class:`RangePromise`, a floor
under every per-instance promise: an instance's effective promise is the
higher of its own ``promised_ballot`` and the floor.

Like the per-instance steps, ``on_prepare_range`` holds no state: it takes the
range promise and the per-instance states and returns the new range promise,
so "a reject leaves the state unchanged" means the very same objects come back
and nothing needs persisting.
"""

from __future__ import annotations

import copy
from collections.abc import Mapping

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from roles import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    ProtocolError,
    RangePromise,
    Reject,
)

ACCEPTOR_ID = 3


def b(round_: int, proposer_id: int = 1) -> Ballot:
    return Ballot(round_, proposer_id)


@pytest.fixture
def acceptor() -> Acceptor:
    return Acceptor(ACCEPTOR_ID)


def accepted(ballot: Ballot, value: bytes, promised: Ballot | None = None) -> AcceptorState:
    return AcceptorState(promised or ballot, ballot, value)


# Promising a range ---------------------------------------------------------------


def test_a_fresh_acceptor_promises_the_range_and_must_persist_it(acceptor: Acceptor) -> None:
    step = acceptor.on_prepare_range(RangePromise(), {}, PrepareRange(4, b(1)))
    assert step.range_promise == RangePromise(4, b(1))
    assert step.reply == PromiseRange(4, b(1), ACCEPTOR_ID, ())
    assert step.persist


def test_the_promise_reports_every_accepted_proposal_from_the_start_in_order(
    acceptor: Acceptor,
) -> None:
    """Section 3: the new leader must learn, for every instance it will
    propose in, the proposal accepted there (P2c, instance by instance)."""
    states = {
        9: accepted(b(2), b"nine"),
        5: accepted(b(1, 2), b"five", promised=b(2)),
        3: accepted(b(1), b"three (below the range)"),
        7: AcceptorState(promised_ballot=b(2)),  # promised, nothing accepted
        4: accepted(b(2, 2), b"four"),
    }
    step = acceptor.on_prepare_range(RangePromise(), states, PrepareRange(4, b(3)))
    assert step.reply == PromiseRange(
        4,
        b(3),
        ACCEPTOR_ID,
        (
            Accepted(4, b(2, 2), ACCEPTOR_ID, b"four"),
            Accepted(5, b(1, 2), ACCEPTOR_ID, b"five"),
            Accepted(9, b(2), ACCEPTOR_ID, b"nine"),
        ),
    )


def test_the_per_instance_states_are_not_touched(acceptor: Acceptor) -> None:
    """The range promise is one record; instances keep their own promises."""
    states = {5: accepted(b(1), b"x")}
    before = copy.deepcopy(states)
    acceptor.on_prepare_range(RangePromise(), states, PrepareRange(1, b(9)))
    assert states == before


@pytest.mark.parametrize("ballot", [b(5, 2), b(5, 1), b(4, 9)], ids=["equal", "lower-id", "lower"])
def test_a_ballot_not_above_the_range_promise_is_rejected(
    acceptor: Acceptor, ballot: Ballot
) -> None:
    promise = RangePromise(10, b(5, 2))
    step = acceptor.on_prepare_range(promise, {}, PrepareRange(10, ballot))
    assert step.reply == Reject(10, ballot, ACCEPTOR_ID, b(5, 2))
    assert step.range_promise is promise
    assert not step.persist


def test_the_range_ballot_counts_even_when_the_new_range_starts_lower(acceptor: Acceptor) -> None:
    """A promise of b(5) from 10 on also covers 10.. of a request from 2."""
    step = acceptor.on_prepare_range(RangePromise(10, b(5)), {}, PrepareRange(2, b(4)))
    assert isinstance(step.reply, Reject)
    assert step.reply.promised_ballot == b(5)


def test_a_per_instance_promise_in_the_range_blocks_a_lower_ballot(acceptor: Acceptor) -> None:
    """The range promise must beat every instance's own promise from the start,
    or it would promise what an instance already refused."""
    states = {6: AcceptorState(promised_ballot=b(7)), 8: AcceptorState(promised_ballot=b(4))}
    for ballot in (b(7), b(6, 9), b(5)):
        step = acceptor.on_prepare_range(RangePromise(), states, PrepareRange(5, ballot))
        assert step.reply == Reject(5, ballot, ACCEPTOR_ID, b(7)), ballot
        assert step.range_promise == RangePromise()
        assert not step.persist
    step = acceptor.on_prepare_range(RangePromise(), states, PrepareRange(5, b(7, 2)))
    assert isinstance(step.reply, PromiseRange)


def test_a_per_instance_promise_below_the_range_does_not_block(acceptor: Acceptor) -> None:
    states = {2: AcceptorState(promised_ballot=b(50)), 3: accepted(b(40), b"old")}
    step = acceptor.on_prepare_range(RangePromise(), states, PrepareRange(4, b(1)))
    assert step.reply == PromiseRange(4, b(1), ACCEPTOR_ID, ())
    assert step.range_promise == RangePromise(4, b(1))


@pytest.mark.parametrize(
    ("old_from", "new_from", "expected_from"),
    [(5, 10, 5), (10, 5, 5), (7, 7, 7)],
    ids=["new-starts-higher", "new-starts-lower", "same-start"],
)
def test_the_range_never_shrinks(
    acceptor: Acceptor, old_from: int, new_from: int, expected_from: int
) -> None:
    """Instances the old promise covered stay covered, now at the higher ballot:
    the promise only ever grows (min of the starts, max of the ballots)."""
    step = acceptor.on_prepare_range(RangePromise(old_from, b(2)), {}, PrepareRange(new_from, b(3)))
    assert step.range_promise == RangePromise(expected_from, b(3))
    assert step.reply == PromiseRange(new_from, b(3), ACCEPTOR_ID, ())


def test_the_zero_range_promise_does_not_widen_a_new_one(acceptor: Acceptor) -> None:
    """The initial RangePromise() starts at 1 but promises nothing."""
    step = acceptor.on_prepare_range(RangePromise(), {}, PrepareRange(8, b(1)))
    assert step.range_promise == RangePromise(8, b(1))


@pytest.mark.parametrize(
    "msg",
    [PrepareRange(3, ZERO_BALLOT), PrepareRange(0, b(1)), PrepareRange(-2, b(1))],
    ids=["zero-ballot", "instance-0", "negative-instance"],
)
def test_an_illegal_prepare_range_is_a_protocol_error(
    acceptor: Acceptor, msg: PrepareRange
) -> None:
    promise = RangePromise(2, b(1))
    states = {3: accepted(b(1), b"x")}
    before = copy.deepcopy((promise, states))
    with pytest.raises(ProtocolError):
        acceptor.on_prepare_range(promise, states, msg)
    assert (promise, states) == before


# The floor under per-instance messages ------------------------------------------------


FLOOR = RangePromise(10, b(5, 2))


@pytest.mark.parametrize("ballot", [b(5, 1), b(4, 9), b(1)], ids=["lower-id", "lower", "lowest"])
def test_an_accept_below_the_floor_is_rejected_with_the_floor(
    acceptor: Acceptor, ballot: Ballot
) -> None:
    """P1a under a range promise: the acceptor promised b(5.2) for instance 12
    without ever seeing a Prepare for it, so a lower Accept must fail."""
    state = AcceptorState()
    step = acceptor.on_accept(state, Accept(12, ballot, b"late"), FLOOR.floor(12))
    assert step.reply == Reject(12, ballot, ACCEPTOR_ID, b(5, 2))
    assert step.state is state
    assert not step.persist


def test_an_accept_at_the_floor_is_accepted(acceptor: Acceptor) -> None:
    """The leader that holds the range promise proposes under that very ballot."""
    step = acceptor.on_accept(AcceptorState(), Accept(12, b(5, 2), b"v"), FLOOR.floor(12))
    assert step.reply == Accepted(12, b(5, 2), ACCEPTOR_ID, b"v")
    assert step.state == AcceptorState(b(5, 2), b(5, 2), b"v")
    assert step.persist


@pytest.mark.parametrize("ballot", [b(5, 2), b(5, 1), b(2)], ids=["equal", "lower-id", "lower"])
def test_a_prepare_not_above_the_floor_is_rejected_with_the_floor(
    acceptor: Acceptor, ballot: Ballot
) -> None:
    state = accepted(b(1), b"old")
    step = acceptor.on_prepare(state, Prepare(10, ballot), FLOOR.floor(10))
    assert step.reply == Reject(10, ballot, ACCEPTOR_ID, b(5, 2))
    assert step.state is state
    assert not step.persist


def test_a_prepare_above_the_floor_is_promised(acceptor: Acceptor) -> None:
    step = acceptor.on_prepare(accepted(b(1), b"old"), Prepare(10, b(6)), FLOOR.floor(10))
    assert step.reply == Promise(10, b(6), ACCEPTOR_ID, b(1), b"old")
    assert step.state == AcceptorState(b(6), b(1), b"old")


def test_the_floor_does_not_reach_below_the_range(acceptor: Acceptor) -> None:
    assert FLOOR.floor(9) == ZERO_BALLOT
    assert FLOOR.floor(10) == FLOOR.floor(10**9) == b(5, 2)
    step = acceptor.on_accept(AcceptorState(), Accept(9, b(1), b"v"), FLOOR.floor(9))
    assert isinstance(step.reply, Accepted)


def test_a_per_instance_promise_above_the_floor_still_counts(acceptor: Acceptor) -> None:
    state = AcceptorState(promised_ballot=b(8))
    step = acceptor.on_accept(state, Accept(12, b(6), b"v"), FLOOR.floor(12))
    assert step.reply == Reject(12, b(6), ACCEPTOR_ID, b(8))


def test_a_range_promise_then_an_old_leaders_accept(acceptor: Acceptor) -> None:
    """The whole story at one acceptor: leader 1 (ballot 1.1) is replaced by
    leader 2 (ballot 2.2), whose range promise reported nothing at instance 7.
    Leader 1's late Accept for 7 must not land, or leader 2, which will fill 7
    with a no-op, could see a different value chosen there."""
    states: dict[int, AcceptorState] = {}
    promise = acceptor.on_prepare_range(RangePromise(), states, PrepareRange(5, b(2, 2)))
    assert promise.reply == PromiseRange(5, b(2, 2), ACCEPTOR_ID, ())
    floor = promise.range_promise.floor(7)
    late = acceptor.on_accept(AcceptorState(), Accept(7, b(1, 1), b"old leader"), floor)
    assert late.reply == Reject(7, b(1, 1), ACCEPTOR_ID, b(2, 2))
    fresh = acceptor.on_accept(AcceptorState(), Accept(7, b(2, 2), b"noop"), floor)
    assert isinstance(fresh.reply, Accepted)


# A model-based property ------------------------------------------------------------


def effective(states: Mapping[int, AcceptorState], rp: RangePromise, instance: int) -> Ballot:
    state = states.get(instance, AcceptorState())
    return max(state.promised_ballot, rp.floor(instance))


ballots = st.builds(Ballot, st.integers(1, 6), st.integers(1, 3))
instances = st.integers(1, 6)
operations = st.lists(
    st.one_of(
        st.tuples(st.just("range"), instances, ballots),
        st.tuples(st.just("prepare"), instances, ballots),
        st.tuples(st.just("accept"), instances, ballots),
    ),
    max_size=30,
)


@settings(max_examples=300, deadline=None)
@given(operations)
def test_promises_only_grow_and_every_promise_range_tells_the_truth(
    ops: list[tuple[str, int, Ballot]],
) -> None:
    """Any sequence of PrepareRange, Prepare and Accept: no instance's
    effective promise ever goes down; nothing is accepted below it; and every
    PromiseRange reports exactly the accepted proposals from its start."""
    acceptor = Acceptor(ACCEPTOR_ID)
    states: dict[int, AcceptorState] = {}
    rp = RangePromise()
    for kind, instance, ballot in ops:
        before = {i: effective(states, rp, i) for i in range(1, 8)}
        if kind == "range":
            rstep = acceptor.on_prepare_range(rp, states, PrepareRange(instance, ballot))
            own = [s.promised_ballot for i, s in states.items() if i >= instance]
            assert isinstance(rstep.reply, PromiseRange) == (ballot > max([rp.ballot, *own]))
            if isinstance(rstep.reply, PromiseRange):
                expected = tuple(
                    Accepted(i, s.accepted_ballot, ACCEPTOR_ID, s.accepted_value)
                    for i, s in sorted(states.items())
                    if i >= instance and s.accepted_value is not None
                )
                assert rstep.reply.accepted == expected
                assert all(before[i] < ballot for i in range(instance, 8))
                # From now on nothing below `ballot` can be accepted in the range.
                assert all(rstep.range_promise.floor(i) == ballot for i in range(instance, 8))
            else:
                assert rstep.range_promise == rp and not rstep.persist
            rp = rstep.range_promise
        else:
            state = states.get(instance, AcceptorState())
            if kind == "prepare":
                step = acceptor.on_prepare(state, Prepare(instance, ballot), rp.floor(instance))
                assert isinstance(step.reply, Promise) == (ballot > before[instance])
            else:
                value = f"{ballot}".encode()
                msg = Accept(instance, ballot, value)
                step = acceptor.on_accept(state, msg, rp.floor(instance))
                assert isinstance(step.reply, Accepted) == (ballot >= before[instance])
            if isinstance(step.reply, Reject):
                assert step.state is state and not step.persist
                assert step.reply.promised_ballot == before[instance]
            states[instance] = step.state
        for i in range(1, 8):
            assert effective(states, rp, i) >= before[i]
