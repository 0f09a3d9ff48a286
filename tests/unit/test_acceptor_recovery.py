"""Identity safety, the pure rules (roles/recovery.py and the acceptor's
no-vote-through rule): when a new acceptor file may vote, and how one that
lost its storage is rebuilt so that it keeps every promise and vote that
mattered. The I/O around them is tests/integration/test_identity.py."""

from __future__ import annotations

import itertools
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
    NotVoting,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    ProtocolError,
    RangePromise,
    Reject,
    majority,
)
from roles.recovery import (
    Introduction,
    JoinVerdict,
    RecoveryInfo,
    RecoveryPlan,
    RecoveryRefused,
    decide_join,
    plan_recovery,
    summarize,
)


def b(round_: int, proposer_id: int = 1) -> Ballot:
    return Ballot(round_, proposer_id)


def info(
    peer: int,
    promised: Ballot = ZERO_BALLOT,
    accepted_through: int = 0,
    no_vote_through: int = 0,
    *,
    voting: bool = True,
    status: str = "voting",
) -> RecoveryInfo:
    return RecoveryInfo(
        peer_id=peer,
        incarnation=f"inc-{peer}",
        voting=voting,
        promised_ballot=promised,
        highest_accepted_instance=accepted_through,
        no_vote_through=no_vote_through,
        status=status,
    )


# The no-vote-through rule ------------------------------------------------------


@pytest.fixture
def recovered() -> Acceptor:
    """Acceptor 1, rebuilt: it never votes on instances 1..5 again."""
    return Acceptor(1, no_vote_through=5)


@pytest.mark.parametrize("instance", [1, 3, 5])
def test_a_recovered_acceptor_does_not_vote_at_or_below_m(
    recovered: Acceptor, instance: int
) -> None:
    state = AcceptorState()
    with pytest.raises(NotVoting, match=r"does not vote on instances <= 5"):
        recovered.on_prepare(state, Prepare(instance, b(9)))
    with pytest.raises(NotVoting, match=r"does not vote on instances <= 5"):
        recovered.on_accept(state, Accept(instance, b(9), b"v"))
    with pytest.raises(NotVoting, match=r"PrepareRange"):
        recovered.on_prepare_range(RangePromise(), {}, PrepareRange(instance, b(9)))
    assert not recovered.votes_on(instance)


def test_refusing_leaves_the_state_unchanged(recovered: Acceptor) -> None:
    """Like any refusal, NotVoting changes nothing, even with state present."""
    state = AcceptorState(b(2), b(2), b"old")
    promise = RangePromise(1, b(3))
    states = {4: state, 7: AcceptorState(b(3))}
    snapshot = (state, promise, dict(states))
    with pytest.raises(NotVoting):
        recovered.on_accept(state, Accept(4, b(9), b"new"), promise.floor(4))
    with pytest.raises(NotVoting):
        recovered.on_prepare_range(promise, states, PrepareRange(5, b(9)))
    assert (state, promise, states) == snapshot
    assert recovered.no_vote_through == 5


def test_a_recovered_acceptor_votes_above_m_under_its_floor(recovered: Acceptor) -> None:
    floor = RangePromise(1, b(7, 2))
    # Below the floor: rejected, as the lost acceptor would have.
    step = recovered.on_prepare(AcceptorState(), Prepare(6, b(7, 1)), floor.floor(6))
    assert isinstance(step.reply, Reject) and step.reply.promised_ballot == b(7, 2)
    step = recovered.on_accept(AcceptorState(), Accept(6, b(7, 1), b"x"), floor.floor(6))
    assert isinstance(step.reply, Reject) and not step.persist
    # At the floor an Accept is fine (the floor's proposer may have won phase 1);
    # above it, a Prepare too.
    step = recovered.on_accept(AcceptorState(), Accept(6, b(7, 2), b"x"), floor.floor(6))
    assert isinstance(step.reply, Accepted) and step.persist
    step = recovered.on_prepare(AcceptorState(), Prepare(6, b(8)), floor.floor(6))
    assert isinstance(step.reply, Promise)
    step = recovered.on_prepare_range(floor, {}, PrepareRange(6, b(8)))
    assert isinstance(step.reply, PromiseRange)
    # The grown range promise still reaches down to 1: it never shrinks.
    assert step.range_promise == RangePromise(1, b(8))


def test_an_ordinary_acceptor_votes_everywhere() -> None:
    acceptor = Acceptor(0)
    assert acceptor.no_vote_through == 0
    assert acceptor.votes_on(1)
    assert isinstance(acceptor.on_prepare(AcceptorState(), Prepare(1, b(1))).reply, Promise)


def test_invalid_input_is_a_protocol_error_before_the_rule(recovered: Acceptor) -> None:
    with pytest.raises(ProtocolError):
        recovered.on_prepare(AcceptorState(), Prepare(1, ZERO_BALLOT))
    with pytest.raises(ValueError, match="no_vote_through"):
        Acceptor(0, no_vote_through=-1)


# Joining: when a new file may vote --------------------------------------------------

PEERS = (0, 2)
ME, MINE = 1, "new-inc"


def answer(peer: int, known: str = "", has_state: bool = False) -> Introduction:
    return Introduction(peer, known, has_state)


def test_every_peer_vouching_lets_a_new_file_vote() -> None:
    decision = decide_join(ME, MINE, PEERS, {0: answer(0), 2: answer(2)})
    assert decision.verdict is JoinVerdict.VOTE


def test_a_peer_that_knows_this_very_file_vouches_for_it() -> None:
    """A new file that introduced itself, crashed and came back is still new."""
    decision = decide_join(ME, MINE, PEERS, {0: answer(0, MINE, True), 2: answer(2)})
    assert decision.verdict is JoinVerdict.VOTE


def test_a_new_file_waits_for_every_peer() -> None:
    """The peer that is down may be the only one that remembers the old self."""
    decision = decide_join(ME, MINE, PEERS, {0: answer(0)})
    assert decision.verdict is JoinVerdict.WAIT
    assert decision.missing == (2,)
    assert "waiting for acceptors 2" in decision.reason
    assert decide_join(ME, MINE, PEERS, {}).missing == (0, 2)


def test_one_peer_knowing_another_incarnation_means_wiped_at_once() -> None:
    decision = decide_join(ME, MINE, PEERS, {2: answer(2, "old-inc", True)})
    assert decision.verdict is JoinVerdict.WIPED
    assert decision.conflicts == {2: "old-inc"}
    assert "acceptor 1's data was lost" in decision.reason
    assert "old-inc" in decision.reason and MINE in decision.reason


def test_a_peer_with_votes_that_never_heard_of_the_id_means_wiped() -> None:
    """Voting acceptors know every peer (they record them while joining), so
    this is a cluster that ran without identity tracking."""
    decision = decide_join(ME, MINE, PEERS, {0: answer(0, has_state=True), 2: answer(2)})
    assert decision.verdict is JoinVerdict.WIPED
    assert "without identity tracking" in decision.reason
    # ...but only once every peer answered: WAIT first.
    assert decide_join(ME, MINE, PEERS, {0: answer(0, has_state=True)}).verdict is (
        JoinVerdict.WAIT
    )


def test_a_lone_acceptor_has_no_one_to_ask() -> None:
    assert decide_join(0, MINE, (), {}).verdict is JoinVerdict.VOTE


def test_join_rejects_nonsense() -> None:
    with pytest.raises(ValueError):
        decide_join(ME, MINE, (0, 1), {})
    with pytest.raises(ValueError):
        decide_join(ME, "", PEERS, {})
    with pytest.raises(ValueError):
        decide_join(ME, MINE, PEERS, {3: answer(3)})
    with pytest.raises(ValueError):
        decide_join(ME, MINE, PEERS, {0: answer(2)})


@settings(max_examples=300, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from([0, 2, 3, 4]),
        st.tuples(st.sampled_from(["", MINE, "a", "b"]), st.booleans()),
    )
)
def test_join_votes_only_when_everyone_answered_and_nobody_objects(
    raw: dict[int, tuple[str, bool]],
) -> None:
    peers = (0, 2, 3, 4)
    answers = {p: answer(p, known, has) for p, (known, has) in raw.items()}
    verdict = decide_join(ME, MINE, peers, answers).verdict
    objects = any(a.known_incarnation not in ("", MINE) for a in answers.values())
    unaware = any(a.has_state and not a.known_incarnation for a in answers.values())
    if verdict is JoinVerdict.VOTE:
        assert set(answers) == set(peers) and not objects and not unaware
    if objects:
        assert verdict is JoinVerdict.WIPED


# Recovery: the plan --------------------------------------------------------------


def test_the_plan_takes_the_highest_promise_and_the_highest_accepted_instance() -> None:
    plan = plan_recovery(
        1,
        (0, 2),
        {0: info(0, b(4, 2), accepted_through=17), 2: info(2, b(6, 1), accepted_through=12)},
    )
    assert plan == RecoveryPlan(floor=b(6, 1), no_vote_through=17)
    assert plan.range_promise == RangePromise(1, b(6, 1))


def test_a_peers_own_no_vote_through_counts_as_accepted() -> None:
    """A peer that was itself recovered stands for what its lost self accepted."""
    plan = plan_recovery(1, (0, 2), {0: info(0, b(2), 3, no_vote_through=40), 2: info(2, b(2), 9)})
    assert plan.no_vote_through == 40


def test_a_cluster_that_never_voted_gives_an_empty_plan() -> None:
    plan = plan_recovery(1, (0, 2), {0: info(0), 2: info(2)})
    assert plan == RecoveryPlan(ZERO_BALLOT, 0)
    assert plan.range_promise == RangePromise()


def test_recovery_needs_every_peer() -> None:
    with pytest.raises(RecoveryRefused, match=r"no answer from acceptor 2"):
        plan_recovery(1, (0, 2), {0: info(0, b(1), 3)})
    with pytest.raises(RecoveryRefused, match=r"acceptors 2, 3"):
        plan_recovery(1, (0, 2, 3), {0: info(0, b(1), 3)})


def test_recovery_needs_every_peer_voting() -> None:
    """Two lost acceptors of three: what they chose together is known to nobody."""
    with pytest.raises(RecoveryRefused, match=r"acceptor 2 is wiped"):
        plan_recovery(1, (0, 2), {0: info(0), 2: info(2, voting=False, status="wiped")})


def test_a_single_acceptor_cannot_be_recovered() -> None:
    with pytest.raises(RecoveryRefused, match="single acceptor"):
        plan_recovery(0, (), {})
    with pytest.raises(ValueError):
        plan_recovery(1, (0, 1), {})
    with pytest.raises(ValueError):
        plan_recovery(1, (0,), {0: info(0), 5: info(5)})


def test_summarize_covers_instances_and_the_range_promise() -> None:
    states = {
        3: AcceptorState(b(5), b(4), b"x"),
        9: AcceptorState(b(2)),  # a promise, nothing accepted
        6: AcceptorState(b(3), b(3), b"y"),
    }
    assert summarize(states, RangePromise()) == (b(5), 6)
    assert summarize(states, RangePromise(10, b(8))) == (b(8), 6)
    assert summarize({}, RangePromise()) == (ZERO_BALLOT, 0)


# Recovery is safe: an exhaustive model ---------------------------------------------


def _chosen(
    states: Mapping[int, Mapping[int, AcceptorState]], n: int
) -> dict[int, set[tuple[Ballot, bytes]]]:
    """instance -> the (ballot, value) pairs a majority accepted."""
    chosen: dict[int, set[tuple[Ballot, bytes]]] = {}
    instances = {i for per in states.values() for i in per}
    for instance in instances:
        votes: dict[tuple[Ballot, bytes], int] = {}
        for per in states.values():
            s = per.get(instance)
            if s is not None and s.accepted_value is not None:
                key = (s.accepted_ballot, s.accepted_value)
                votes[key] = votes.get(key, 0) + 1
        won = {k for k, count in votes.items() if count >= majority(n)}
        if won:
            chosen[instance] = won
    return chosen


state_strategy = st.builds(
    lambda p, a, v: (
        AcceptorState(b(max(p, a)), b(a), v) if a else AcceptorState(b(p) if p else ZERO_BALLOT)
    ),
    st.integers(0, 4),
    st.integers(0, 4),
    st.sampled_from([b"v", b"w"]),
)


@settings(max_examples=400, deadline=None)
@given(
    st.lists(
        st.dictionaries(st.integers(1, 6), state_strategy, max_size=6), min_size=3, max_size=3
    ),
    st.lists(st.integers(0, 4), min_size=3, max_size=3),
    st.integers(0, 2),
)
def test_the_plan_covers_everything_the_lost_acceptor_helped_decide(
    per_acceptor: list[dict[int, AcceptorState]], range_rounds: list[int], lost: int
) -> None:
    """For any states of three acceptors, lose one and plan from the others:
    every instance where a value was chosen with the lost one's vote is <= M,
    and every ballot a majority including the lost one promised is <= floor."""
    n = 3
    states = dict(enumerate(per_acceptor))
    ranges = {i: RangePromise(1, b(r)) if r else RangePromise() for i, r in enumerate(range_rounds)}
    peers = [i for i in range(n) if i != lost]
    infos = {}
    for p in peers:
        promised, accepted_through = summarize(states[p], ranges[p])
        infos[p] = info(p, promised, accepted_through)
    plan = plan_recovery(lost, peers, infos)

    for instance, pairs in _chosen(states, n).items():
        for ballot, value in pairs:
            lost_state = states[lost].get(instance)
            voted = lost_state is not None and (lost_state.accepted_ballot, value) == (
                ballot,
                lost_state.accepted_value,
            )
            if voted:
                assert instance <= plan.no_vote_through

    # A ballot promised by a majority that includes the lost acceptor (at one
    # instance, or by range promises) is also promised by a live peer.
    for quorum in itertools.combinations(range(n), majority(n)):
        if lost not in quorum:
            continue
        for instance in range(1, 7):
            promised = [
                max(
                    states[a].get(instance, AcceptorState()).promised_ballot,
                    ranges[a].floor(instance),
                )
                for a in quorum
            ]
            assert min(promised) <= plan.floor
