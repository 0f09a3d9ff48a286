"""A bounded phase 1: acceptors skip what they know is chosen, and page the rest.

A proposer restarted with no state after a long log used to ask every
acceptor for every accepted value since instance 1 in one reply, which
outgrew the message-size limit, so phase 1 never completed. Now a leader's
Accept carries ``chosen_through``; an acceptor reports only above the highest
it heard, says how far that is, and pages what is left.
"""

from __future__ import annotations

import pytest

from roles import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    PrepareRange,
    PromiseRange,
    ProtocolError,
    RangePromise,
    Reject,
    Role,
    SendToAcceptors,
)
from roles.acceptor import ENTRY_OVERHEAD, report_start
from roles.campaign import check_promise_range
from tests.unit.leader_support import accepts, b, campaign_above, make, of

OLD = Ballot(1, 2)


def _accepted(instances: range, ballot: Ballot = OLD, size: int = 10) -> dict[int, AcceptorState]:
    return {i: AcceptorState(ballot, ballot, bytes([i % 256]) * size) for i in instances}


def test_promise_skips_what_the_acceptor_knows_is_chosen() -> None:
    acceptor = Acceptor(1)
    states = _accepted(range(1, 101))
    msg = PrepareRange(1, Ballot(2, 1))
    step = acceptor.on_prepare_range(RangePromise(), states, msg, chosen_through=95)
    assert isinstance(step.reply, PromiseRange)
    assert [e.instance for e in step.reply.accepted] == [96, 97, 98, 99, 100]
    assert step.reply.chosen_through == 95
    assert step.reply.next_page == 0
    # The promise still covers every instance from 1.
    assert step.range_promise == RangePromise(1, Ballot(2, 1))
    assert step.persist


def test_promise_on_a_chosen_instance_does_not_block_the_range() -> None:
    """A higher per-instance promise below chosen_through does not count in H."""
    acceptor = Acceptor(1)
    states = {5: AcceptorState(Ballot(9, 3)), 20: AcceptorState(OLD, OLD, b"v")}
    msg = PrepareRange(1, Ballot(2, 1))
    step = acceptor.on_prepare_range(RangePromise(), states, msg, chosen_through=10)
    assert isinstance(step.reply, PromiseRange)
    # Above chosen_through it still does.
    step = acceptor.on_prepare_range(RangePromise(), states, msg, chosen_through=4)
    assert isinstance(step.reply, Reject)
    assert step.reply.promised_ballot == Ballot(9, 3)


def test_report_is_paged_and_each_page_fits() -> None:
    acceptor = Acceptor(1)
    states = _accepted(range(1, 51), size=100)
    page_bytes = 10 * (100 + ENTRY_OVERHEAD)
    ballot = Ballot(2, 1)
    step = acceptor.on_prepare_range(
        RangePromise(), states, PrepareRange(1, ballot), page_bytes=page_bytes
    )
    reply = step.reply
    assert isinstance(reply, PromiseRange)
    got = list(reply.accepted)
    assert len(got) == 10 and reply.next_page == 11
    promise = step.range_promise
    while reply.next_page:
        page = PrepareRange(1, ballot, page_from=reply.next_page)
        step = acceptor.on_prepare_range(promise, states, page, page_bytes=page_bytes)
        reply = step.reply
        assert isinstance(reply, PromiseRange)
        assert not step.persist and step.range_promise is promise
        assert len(reply.accepted) <= 10
        check_promise_range(reply)
        got += reply.accepted
    assert [e.instance for e in got] == list(range(1, 51))


def test_a_page_always_carries_one_entry_even_a_large_one() -> None:
    acceptor = Acceptor(1)
    states = _accepted(range(1, 4), size=1000)
    step = acceptor.on_prepare_range(
        RangePromise(), states, PrepareRange(1, Ballot(2, 1)), page_bytes=10
    )
    assert isinstance(step.reply, PromiseRange)
    assert len(step.reply.accepted) == 1 and step.reply.next_page == 2


def test_a_page_after_a_higher_promise_is_a_reject() -> None:
    acceptor = Acceptor(1)
    states = _accepted(range(1, 11))
    ours, theirs = Ballot(2, 1), Ballot(3, 2)
    page = PrepareRange(1, ours, page_from=5)
    # Another proposer took the range over meanwhile.
    step = acceptor.on_prepare_range(RangePromise(1, theirs), states, page)
    assert isinstance(step.reply, Reject) and step.reply.promised_ballot == theirs
    # Or one instance in the page's part promised more.
    states[7] = AcceptorState(theirs, OLD, states[7].accepted_value)
    step = acceptor.on_prepare_range(RangePromise(1, ours), states, page)
    assert isinstance(step.reply, Reject) and step.reply.promised_ballot == theirs


def test_a_page_of_a_promise_never_made_is_a_protocol_error() -> None:
    acceptor = Acceptor(1)
    with pytest.raises(ProtocolError):
        acceptor.on_prepare_range(
            RangePromise(1, Ballot(1, 1)), {}, PrepareRange(1, Ballot(2, 1), page_from=3)
        )
    with pytest.raises(ProtocolError):
        acceptor.on_prepare_range(
            RangePromise(5, Ballot(2, 1)), {}, PrepareRange(5, Ballot(2, 1), page_from=3)
        )


def test_a_fresh_prepare_range_under_the_promised_ballot_is_still_refused() -> None:
    """A restarted proposer reusing its ballot never gets a first page, so never pages."""
    acceptor = Acceptor(1)
    ballot = Ballot(2, 1)
    step = acceptor.on_prepare_range(RangePromise(1, ballot), {}, PrepareRange(1, ballot))
    assert isinstance(step.reply, Reject)


def test_report_start() -> None:
    assert report_start(PrepareRange(1, Ballot(1, 1)), 0) == 1
    assert report_start(PrepareRange(1, Ballot(1, 1)), 40) == 41
    assert report_start(PrepareRange(50, Ballot(1, 1)), 40) == 50
    assert report_start(PrepareRange(1, Ballot(1, 1), page_from=60), 40) == 60


def test_check_promise_range_refuses_a_page_that_goes_nowhere() -> None:
    ballot = Ballot(2, 1)
    entry = Accepted(3, OLD, 1, b"v")
    check_promise_range(PromiseRange(1, ballot, 1, (entry,), next_page=4))
    for bad in (
        PromiseRange(1, ballot, 1, (), next_page=4),  # no entry, yet more pages
        PromiseRange(1, ballot, 1, (entry,), next_page=3),  # goes back
        PromiseRange(1, ballot, 1, (entry,), page_from=4),  # entry before its page
        PromiseRange(5, ballot, 1, (), page_from=3),
        PromiseRange(1, ballot, 1, (entry, entry)),  # out of order
    ):
        with pytest.raises(ProtocolError):
            check_promise_range(bad)


def test_restarted_leader_skips_the_chosen_prefix_and_proposes_only_the_rest() -> None:
    """A leader with no state learns chosen_through from the promises."""
    leader = make()
    ballot = campaign_above(leader)
    tail = (Accepted(1001, OLD, 1, b"x"),)
    effects = leader.on_promise_range(PromiseRange(1, ballot, 1, tail, chosen_through=1000), 0.0)
    effects += leader.on_promise_range(PromiseRange(1, ballot, 2, (), chosen_through=998), 0.0)
    assert leader.role is Role.LEADER
    assert leader.chosen_through == 1000
    assert accepts(effects) == [(1001, b"x")]
    leader.submit(7, b"new", 0.0)
    assert leader.next_instance == 1003


def test_leader_asks_for_every_page_before_a_promise_counts() -> None:
    leader = make()
    ballot = campaign_above(leader)
    first = PromiseRange(1, ballot, 1, (Accepted(1, OLD, 1, b"a"),), next_page=2)
    effects = leader.on_promise_range(first, 0.0)
    asked = [e for e in of(SendToAcceptors, effects) if isinstance(e.message, PrepareRange)]
    assert asked == [SendToAcceptors(PrepareRange(1, ballot, page_from=2), frozenset({1}))]
    leader.on_promise_range(PromiseRange(1, ballot, 2), 0.0)
    assert leader.role is Role.CANDIDATE  # acceptor 1's promise is not complete yet
    # A page out of turn (a duplicate of the first) is ignored.
    assert leader.on_promise_range(first, 0.0) == []
    last = PromiseRange(1, ballot, 1, (Accepted(2, OLD, 1, b"b"),), page_from=2)
    effects = leader.on_promise_range(last, 0.0)
    assert leader.role is Role.LEADER
    assert accepts(effects) == [(1, b"a"), (2, b"b")]


def test_leader_accepts_carry_its_chosen_through() -> None:
    leader = make(chosen_through=41)
    leader.campaign(0.0)
    leader.on_promise_range(PromiseRange(42, leader.ballot, 1), 0.0)
    effects = leader.on_promise_range(PromiseRange(42, leader.ballot, 2), 0.0)
    effects += leader.submit(1, b"c", 0.0)
    sent = [e.message for e in of(SendToAcceptors, effects) if isinstance(e.message, Accept)]
    assert sent and all(m.chosen_through == 41 for m in sent)
    assert b(1) <= leader.ballot
