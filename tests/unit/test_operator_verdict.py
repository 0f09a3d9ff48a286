"""The ExplainInstance verdict (``servers.verdict.judge``) and value
descriptions, on hand-built acceptor states: every branch an operator may
meet, without a cluster."""

from __future__ import annotations

from paxos_service.client.operator import describe_value
from paxos_service.core import log_entry
from paxos_service.servers.explain import explained_value
from paxos_service.servers.verdict import judge
from paxos_service.v1 import paxos_pb2 as pb


def acceptor(
    acceptor_id: int,
    accepted: tuple[int, int] | None = None,
    value: bytes = b"",
    promised: tuple[int, int] | None = None,
    range_from: int = 0,
    reachable: bool = True,
) -> pb.AcceptorInstanceState:
    state = pb.AcceptorInstanceState(
        acceptor_id=acceptor_id,
        address=f"a{acceptor_id}:1",
        reachable=reachable,
        error="" if reachable else "connection refused",
    )
    if accepted is not None:
        state.accepted_ballot.CopyFrom(pb.Ballot(round=accepted[0], proposer_id=accepted[1]))
        state.accepted_value.CopyFrom(explained_value(value))
    top = promised or accepted
    if top is not None:
        state.promised_ballot.CopyFrom(pb.Ballot(round=top[0], proposer_id=top[1]))
        if range_from:
            state.range_promised_ballot.CopyFrom(state.promised_ballot)
            state.range_from_instance = range_from
        else:
            state.instance_promised_ballot.CopyFrom(state.promised_ballot)
    return state


def test_a_majority_on_one_ballot_is_chosen_and_lagging_learners_are_named() -> None:
    learner = pb.LearnerInstanceState(
        learner_id=1, reachable=True, kv_enabled=True, applied_instance=6
    )
    verdict = judge(
        7,
        [acceptor(0, (2, 1), b"x"), acceptor(1, (2, 1), b"x"), acceptor(2)],
        [learner],
    )
    assert verdict.verdict == pb.INSTANCE_VERDICT_CHOSEN
    assert verdict.summary == (
        "chosen: 'x' at ballot 2.1, accepted by acceptors 0, 1 (2 of 3; 2 needed); "
        "learner 1 has applied only through 6 (learners catch up from the acceptors)"
    )
    assert verdict.chosen_value is not None and verdict.chosen_value.value == b"x"


def test_a_learner_that_knows_makes_it_chosen_without_a_visible_majority() -> None:
    learner = pb.LearnerInstanceState(
        learner_id=0, reachable=True, decided=True, value=explained_value(b"x")
    )
    states = [acceptor(0, (1, 0), b"x"), acceptor(1, (3, 1), b"x"), acceptor(2, (4, 2), b"x")]
    verdict = judge(7, states, [learner])
    assert verdict.verdict == pb.INSTANCE_VERDICT_CHOSEN
    assert verdict.summary.startswith("chosen ('x'): learner 0 knows it")


def test_a_log_chosen_through_the_instance_takes_the_highest_accepted_value() -> None:
    states = [acceptor(0, (1, 0), b"x"), acceptor(1, (3, 1), b"y"), acceptor(2)]
    verdict = judge(7, states, log_chosen_through=9)
    assert verdict.verdict == pb.INSTANCE_VERDICT_CHOSEN
    assert verdict.chosen_value is not None and verdict.chosen_value.value == b"y"
    assert "the log is chosen through instance 9" in verdict.summary


def test_too_few_answers_is_unknown_and_says_who_is_missing() -> None:
    states = [acceptor(0, (1, 0), b"x"), acceptor(1, reachable=False), acceptor(2, reachable=False)]
    verdict = judge(7, states)
    assert verdict.verdict == pb.INSTANCE_VERDICT_UNKNOWN
    assert verdict.summary == (
        "unknown: only 1 of 3 acceptors answered and 2 are needed to tell whether a value is "
        "chosen; acceptor 0 accepted 'x' at ballot 1.0; unreachable: acceptor 1 (a1:1: "
        "connection refused); acceptor 2 (a2:1: connection refused)"
    )


def test_nothing_accepted_under_a_range_promise_beyond_the_log() -> None:
    states = [acceptor(i, promised=(5, 1), range_from=3) for i in range(3)]
    verdict = judge(40, states, log_next_instance=12)
    assert verdict.verdict == pb.INSTANCE_VERDICT_EMPTY
    assert verdict.summary == (
        "no acceptor accepted anything; acceptors 0, 1, 2 promised ballot 5.1 to the log leader "
        "for every instance from 3, and no Accept for this one arrived: the log has not reached "
        "it (next instance 12)"
    )


def test_nothing_promised_means_nothing_was_proposed() -> None:
    verdict = judge(40, [acceptor(i) for i in range(3)])
    assert verdict.verdict == pb.INSTANCE_VERDICT_EMPTY
    assert verdict.summary.endswith("nothing was proposed for instance 40")


def test_split_votes_are_stuck_and_a_higher_promise_is_explained() -> None:
    states = [
        acceptor(0, (2, 0), b"x"),
        acceptor(1, (3, 1), b"y", promised=(4, 2)),
        acceptor(2, promised=(4, 2)),
    ]
    verdict = judge(7, states)
    assert verdict.verdict == pb.INSTANCE_VERDICT_STUCK
    assert verdict.summary.startswith(
        "stuck: no ballot has a majority (2 of 3 needed): acceptor 1 accepted 'y' at ballot 3.1; "
        "acceptor 0 accepted 'x' at ballot 2.0; acceptor 2 accepted nothing; ballot 4.2 is "
        "promised but was accepted nowhere"
    )
    assert "Proposing again for this instance finishes it" in verdict.summary


def test_values_are_described_for_humans() -> None:
    assert describe_value(explained_value(b"hello")) == "'hello'"
    assert describe_value(explained_value(b"\xff\x00")).startswith("2 bytes, sha256 ")
    assert describe_value(explained_value(b"a" * 100, limit=10)) == "'aaaaaaaaaa'... (100 bytes)"
    assert describe_value(explained_value(log_entry.NOOP)) == "log no-op"
    put = pb.Command(put=pb.PutOp(key="k", value=b"v")).SerializeToString()
    assert describe_value(explained_value(log_entry.encode_batch([put, put]))) == (
        "log entry, 2 commands (put 'k', put 'k')"
    )


def test_a_compacted_instance_is_chosen_and_says_where_its_value_went() -> None:
    compacted = acceptor(1)
    compacted.compacted_through = 90
    verdict = judge(7, [acceptor(0), compacted, acceptor(2, reachable=False)])
    assert verdict.verdict == pb.INSTANCE_VERDICT_CHOSEN
    assert verdict.summary.startswith(
        "chosen and compacted: acceptor 1 dropped the log through instance 90"
    )
    assert verdict.chosen_value is None
