"""The acceptor ("Paxos Made Simple", section 2.2, phases 1b and 2b).

P1a: an acceptor can accept a proposal numbered n iff it has not responded to
a prepare request having a number greater than n. Our acceptor also refuses a
Prepare for the ballot it already promised (strictly higher only), which makes
a ballot win phase 1 at most once.

The acceptor holds no state: each step takes an :class:`AcceptorState` and
returns the next one, so "an illegal message leaves the state unchanged" means
the caller's state object is untouched and nothing new is returned.
"""

from __future__ import annotations

import copy

import pytest

from roles import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    AcceptorStep,
    Ballot,
    Prepare,
    Promise,
    ProtocolError,
    Reject,
)

ACCEPTOR_ID = 2
INSTANCE = 7


def b(round_: int, proposer_id: int = 1) -> Ballot:
    return Ballot(round_, proposer_id)


@pytest.fixture
def acceptor() -> Acceptor:
    return Acceptor(ACCEPTOR_ID)


def promised(ballot: Ballot) -> AcceptorState:
    return AcceptorState(promised_ballot=ballot)


def accepted(promised_ballot: Ballot, accepted_ballot: Ballot, value: bytes) -> AcceptorState:
    return AcceptorState(promised_ballot, accepted_ballot, value)


# Phase 1b -------------------------------------------------------------------


def test_first_prepare_is_promised_and_must_be_persisted(acceptor: Acceptor) -> None:
    step = acceptor.on_prepare(AcceptorState(), Prepare(INSTANCE, b(1)))
    assert step == AcceptorStep(
        state=AcceptorState(promised_ballot=b(1)),
        reply=Promise(INSTANCE, b(1), ACCEPTOR_ID, ZERO_BALLOT, None),
        persist=True,
    )


def test_prepare_with_higher_ballot_is_promised(acceptor: Acceptor) -> None:
    step = acceptor.on_prepare(promised(b(3)), Prepare(INSTANCE, b(3, 2)))
    assert isinstance(step.reply, Promise)
    assert step.state.promised_ballot == b(3, 2)
    assert step.persist


@pytest.mark.parametrize("ballot", [b(3), b(2, 9), b(1)], ids=["equal", "lower-round", "lowest"])
def test_prepare_not_strictly_higher_is_rejected_with_the_promised_ballot(
    acceptor: Acceptor, ballot: Ballot
) -> None:
    """Section 2.2: promise only ballots strictly above every earlier promise.
    The Reject carries the promised ballot so the proposer can jump above it."""
    state = accepted(b(3), b(2), b"x")
    step = acceptor.on_prepare(state, Prepare(INSTANCE, ballot))
    assert step.reply == Reject(INSTANCE, ballot, ACCEPTOR_ID, promised_ballot=b(3))
    assert step.state is state
    assert step.persist is False


def test_promise_reports_the_highest_accepted_proposal(acceptor: Acceptor) -> None:
    """Section 2.2, phase 1b: the promise carries the highest-numbered proposal
    the acceptor has accepted, which the proposer needs to satisfy P2c."""
    state = accepted(b(4), b(4), b"v4")
    step = acceptor.on_prepare(state, Prepare(INSTANCE, b(5)))
    assert step.reply == Promise(
        INSTANCE, b(5), ACCEPTOR_ID, accepted_ballot=b(4), accepted_value=b"v4"
    )
    # Promising never touches what was accepted.
    assert step.state == accepted(b(5), b(4), b"v4")


# Phase 2b -------------------------------------------------------------------


@pytest.mark.parametrize(
    ("state", "ballot"),
    [
        (AcceptorState(), b(1)),
        (promised(b(2)), b(2)),
        (promised(b(2)), b(3)),
        (accepted(b(2), b(1), b"old"), b(2)),
    ],
    ids=["fresh", "equal-to-promise", "above-promise", "replaces-older-accept"],
)
def test_accept_at_or_above_the_promise_is_accepted(
    acceptor: Acceptor, state: AcceptorState, ballot: Ballot
) -> None:
    """P1a: accepting is allowed unless a higher Prepare was promised."""
    step = acceptor.on_accept(state, Accept(INSTANCE, ballot, b"new"))
    assert step == AcceptorStep(
        state=AcceptorState(ballot, ballot, b"new"),
        reply=Accepted(INSTANCE, ballot, ACCEPTOR_ID, b"new"),
        persist=True,
    )


def test_accept_below_the_promise_is_rejected_with_the_promised_ballot(acceptor: Acceptor) -> None:
    """P1a: having promised b(3), the acceptor must not accept b(2)."""
    state = accepted(b(3), b(1), b"old")
    step = acceptor.on_accept(state, Accept(INSTANCE, b(2), b"new"))
    assert step.reply == Reject(INSTANCE, b(2), ACCEPTOR_ID, promised_ballot=b(3))
    assert step.state is state
    assert step.persist is False


def test_accept_below_the_promise_from_a_higher_proposer_id_of_the_same_round(
    acceptor: Acceptor,
) -> None:
    state = promised(b(3, 2))
    step = acceptor.on_accept(state, Accept(INSTANCE, b(3, 1), b"v"))
    assert isinstance(step.reply, Reject)
    assert step.state is state


def test_duplicate_accept_is_acknowledged_without_a_write(acceptor: Acceptor) -> None:
    """A retransmitted Accept gets the same Accepted again, and there is nothing
    new to make durable."""
    first = acceptor.on_accept(AcceptorState(), Accept(INSTANCE, b(1), b"v"))
    again = acceptor.on_accept(first.state, Accept(INSTANCE, b(1), b"v"))
    assert again.reply == first.reply
    assert again.state == first.state
    assert again.persist is False


def test_two_values_under_one_ballot_is_a_protocol_error(acceptor: Acceptor) -> None:
    """One ballot carries one value (section 2.2); a second one means a broken
    proposer, and the acceptor keeps the value it has."""
    state = accepted(b(2), b(2), b"first")
    snapshot = copy.deepcopy(state)
    with pytest.raises(ProtocolError, match="another value"):
        acceptor.on_accept(state, Accept(INSTANCE, b(2), b"second"))
    assert state == snapshot


def test_replies_name_the_acceptor_and_instance(acceptor: Acceptor) -> None:
    for step in (
        acceptor.on_prepare(AcceptorState(), Prepare(11, b(1))),
        acceptor.on_accept(AcceptorState(), Accept(11, b(1), b"v")),
        acceptor.on_prepare(promised(b(5)), Prepare(11, b(1))),
    ):
        assert step.reply.acceptor_id == ACCEPTOR_ID
        assert step.reply.instance == 11


# The rules as a table, as in h11: (state, message) -> (reply type, new state).

T = AcceptorState
RULES: list[tuple[AcceptorState, Prepare | Accept, type, AcceptorState]] = [
    (T(), Prepare(1, b(1)), Promise, T(b(1))),
    (T(b(2)), Prepare(1, b(1)), Reject, T(b(2))),
    (T(b(2)), Prepare(1, b(2)), Reject, T(b(2))),
    (T(b(2)), Prepare(1, b(2, 2)), Promise, T(b(2, 2))),
    (T(b(2), b(2), b"a"), Prepare(1, b(3)), Promise, T(b(3), b(2), b"a")),
    (T(), Accept(1, b(1), b"a"), Accepted, T(b(1), b(1), b"a")),
    (T(b(2)), Accept(1, b(1), b"a"), Reject, T(b(2))),
    (T(b(2)), Accept(1, b(2), b"a"), Accepted, T(b(2), b(2), b"a")),
    (T(b(2)), Accept(1, b(9), b"a"), Accepted, T(b(9), b(9), b"a")),
    (T(b(3), b(2), b"a"), Accept(1, b(2), b"a"), Reject, T(b(3), b(2), b"a")),
    (T(b(3), b(2), b"a"), Accept(1, b(3), b"c"), Accepted, T(b(3), b(3), b"c")),
]


@pytest.mark.parametrize(("state", "msg", "reply_type", "new_state"), RULES)
def test_rule_table(
    acceptor: Acceptor,
    state: AcceptorState,
    msg: Prepare | Accept,
    reply_type: type,
    new_state: AcceptorState,
) -> None:
    if isinstance(msg, Prepare):
        step = acceptor.on_prepare(state, msg)
    else:
        step = acceptor.on_accept(state, msg)
    assert type(step.reply) is reply_type
    assert step.state == new_state
    # The caller writes to disk exactly when the state changed.
    assert step.persist == (new_state != state)


# Illegal input: a ProtocolError, and the state is exactly as it was ----------


ILLEGAL: list[Prepare | Accept] = [
    Prepare(INSTANCE, ZERO_BALLOT),
    Prepare(INSTANCE, Ballot(0, 3)),
    Prepare(0, b(5)),
    Prepare(-1, b(5)),
    Accept(INSTANCE, ZERO_BALLOT, b"v"),
    Accept(INSTANCE, Ballot(0, 3), b"v"),
    Accept(0, b(5), b"v"),
    Accept(-4, b(5), b"v"),
]


@pytest.mark.parametrize("msg", ILLEGAL, ids=repr)
@pytest.mark.parametrize(
    "state",
    [AcceptorState(), promised(b(2)), accepted(b(3), b(2), b"kept")],
    ids=["fresh", "promised", "accepted"],
)
def test_zero_ballot_or_instance_below_one_raises_and_leaves_state_unchanged(
    acceptor: Acceptor, state: AcceptorState, msg: Prepare | Accept
) -> None:
    snapshot = copy.deepcopy(state)
    acceptor_before = dict(vars(acceptor))
    handler = acceptor.on_prepare if isinstance(msg, Prepare) else acceptor.on_accept
    with pytest.raises(ProtocolError):
        handler(state, msg)  # type: ignore[arg-type]
    assert state == snapshot
    assert vars(acceptor) == acceptor_before
    # The state the caller still holds works as before: a good message after the
    # bad one gets exactly the answer it would have got without it.
    good = Prepare(INSTANCE, b(10))
    assert acceptor.on_prepare(state, good) == Acceptor(ACCEPTOR_ID).on_prepare(snapshot, good)


def test_acceptor_is_a_pure_function_of_its_inputs(acceptor: Acceptor) -> None:
    """No hidden memory: the same (state, message) always gives the same step,
    and instances never see each other's state."""
    state = accepted(b(2), b(2), b"v")
    msg = Prepare(INSTANCE, b(4))
    assert acceptor.on_prepare(state, msg) == acceptor.on_prepare(state, msg)
    acceptor.on_prepare(AcceptorState(), Prepare(INSTANCE + 1, b(100)))
    assert acceptor.on_prepare(state, msg).state == accepted(b(4), b(2), b"v")


# AcceptorState invariants -----------------------------------------------------


def test_state_cannot_have_accepted_above_its_promise() -> None:
    with pytest.raises(ValueError, match="exceed"):
        AcceptorState(promised_ballot=b(1), accepted_ballot=b(2), accepted_value=b"v")


@pytest.mark.parametrize(("accepted_ballot", "accepted_value"), [(ZERO_BALLOT, b"v"), (b(1), None)])
def test_state_has_a_value_exactly_when_it_has_an_accepted_ballot(
    accepted_ballot: Ballot, accepted_value: bytes | None
) -> None:
    with pytest.raises(ValueError, match="exactly when"):
        AcceptorState(b(1), accepted_ballot, accepted_value)
