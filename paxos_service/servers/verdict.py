"""The verdict of ``ExplainInstance``: is an instance chosen, and if not, why?

Whether a value is chosen is a property of a majority of acceptors, which no
single acceptor knows: a proposer or learner gathers every acceptor's state
(and what the learners and the log know) and :func:`judge` decides from those
protobufs alone, so every branch can be tested without a cluster.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Sequence
from dataclasses import dataclass

from paxos_service.client.operator import describe_value
from paxos_service.v1 import paxos_pb2 as pb
from roles import majority


def _ballot(msg: pb.Ballot) -> str:
    return f"{msg.round}.{msg.proposer_id}"


def _key(msg: pb.Ballot) -> tuple[int, int]:
    return (msg.round, msg.proposer_id)


def _ids(word: str, ids: Sequence[int]) -> str:
    return f"{word}{'s' if len(ids) != 1 else ''} " + ", ".join(str(i) for i in ids)


@dataclass(frozen=True)
class Verdict:
    """What :func:`judge` found: the verdict, a summary for operators, and the
    chosen value and ballot when they are known."""

    verdict: pb.InstanceVerdict.ValueType
    summary: str
    chosen_value: pb.ExplainedValue | None = None
    chosen_ballot: pb.Ballot | None = None


@dataclass(frozen=True)
class _Tally:
    """The acceptors' states, counted: who answered and who accepted which ballot."""

    total: int
    quorum: int
    answered: list[pb.AcceptorInstanceState]
    #: Ballot -> the acceptors that answered and accepted it, in their order.
    votes: dict[tuple[int, int], list[pb.AcceptorInstanceState]]
    #: "; unreachable: ..." naming every acceptor that did not answer, or "".
    down_note: str

    @classmethod
    def of(cls, acceptors: Sequence[pb.AcceptorInstanceState]) -> _Tally:
        answered = [a for a in acceptors if a.reachable]
        down = [a for a in acceptors if not a.reachable]
        votes: dict[tuple[int, int], list[pb.AcceptorInstanceState]] = defaultdict(list)
        for a in answered:
            if a.HasField("accepted_ballot"):
                votes[_key(a.accepted_ballot)].append(a)
        down_note = (
            "; unreachable: "
            + "; ".join(f"acceptor {a.acceptor_id} ({a.address}: {a.error})" for a in down)
            if down
            else ""
        )
        return cls(len(acceptors), majority(len(acceptors)), answered, votes, down_note)

    @property
    def majority_answered(self) -> bool:
        return len(self.answered) >= self.quorum


def judge(
    instance: int,
    acceptors: Sequence[pb.AcceptorInstanceState],
    learners: Sequence[pb.LearnerInstanceState] = (),
    *,
    log_chosen_through: int = 0,
    log_next_instance: int = 0,
) -> Verdict:
    """Whether ``instance`` is chosen, from every acceptor's state (all of the
    cluster's acceptors, reachable or not) and what learners and the log know.

    Chosen means a majority of *all* acceptors accepted one ballot: that is the
    definition, so it is checked first. A learner or the log leader may know
    of a choice that the acceptors no longer show under one ballot (a later
    ballot re-proposed the chosen value to some of them); that counts too.
    Otherwise the summary says what is missing, and why, as far as the states
    tell.
    """
    tally = _Tally.of(acceptors)
    votes = tally.votes
    majorities = [k for k, voters in votes.items() if len(voters) >= tally.quorum]
    if majorities:
        return _chosen_by_majority(tally, votes[max(majorities)], learners)
    compacted = [a for a in tally.answered if a.compacted_through]
    if compacted:
        # Only chosen instances are ever compacted (roles/compaction.py).
        return Verdict(
            pb.INSTANCE_VERDICT_CHOSEN,
            f"chosen and compacted: {_ids('acceptor', [a.acceptor_id for a in compacted])} "
            f"dropped the log through instance {max(a.compacted_through for a in compacted)}; "
            "its value is applied in the learners' stores and snapshots, and no longer kept "
            f"as a vote{tally.down_note}",
        )

    knower = next((lr for lr in learners if lr.reachable and lr.decided), None)
    if knower is not None or (log_chosen_through and instance <= log_chosen_through):
        return _chosen_as_others_know(tally, knower, log_chosen_through)

    accepted_note = "; ".join(
        f"{_ids('acceptor', [a.acceptor_id for a in voters])} accepted "
        f"{describe_value(voters[0].accepted_value)} at ballot {_ballot(voters[0].accepted_ballot)}"
        for _, voters in sorted(votes.items(), reverse=True)
    )
    if not tally.majority_answered:
        seen = f"; {accepted_note}" if accepted_note else "; none of them accepted anything"
        return Verdict(
            pb.INSTANCE_VERDICT_UNKNOWN,
            f"unknown: only {len(tally.answered)} of {tally.total} acceptors answered and "
            f"{tally.quorum} are needed to tell whether a value is chosen{seen}{tally.down_note}",
        )

    promised = [a for a in tally.answered if a.HasField("promised_ballot")]
    top_promise = max((_key(a.promised_ballot) for a in promised), default=None)
    if not votes:
        why = _why_nothing_accepted(instance, promised, top_promise, log_next_instance)
        return Verdict(
            pb.INSTANCE_VERDICT_EMPTY, f"no acceptor accepted anything{why}{tally.down_note}"
        )
    return _stuck(tally, accepted_note, top_promise)


def _chosen_by_majority(
    tally: _Tally,
    voters: Sequence[pb.AcceptorInstanceState],
    learners: Sequence[pb.LearnerInstanceState],
) -> Verdict:
    """Chosen by definition: ``voters``, a majority, accepted one ballot."""
    first = voters[0]
    summary = (
        f"chosen: {describe_value(first.accepted_value)} at ballot "
        f"{_ballot(first.accepted_ballot)}, accepted by "
        f"{_ids('acceptor', [a.acceptor_id for a in voters])} "
        f"({len(voters)} of {tally.total}; {tally.quorum} needed)"
    )
    behind = [
        f"learner {lr.learner_id} has applied only through {lr.applied_instance}"
        if lr.kv_enabled
        else f"learner {lr.learner_id} was not told yet"
        for lr in learners
        if lr.reachable and not lr.decided
    ]
    if behind:
        summary += "; " + "; ".join(behind) + " (learners catch up from the acceptors)"
    return Verdict(pb.INSTANCE_VERDICT_CHOSEN, summary, first.accepted_value, first.accepted_ballot)


def _chosen_as_others_know(
    tally: _Tally, knower: pb.LearnerInstanceState | None, log_chosen_through: int
) -> Verdict:
    """Chosen, as ``knower`` (a learner) or else the log says, though the
    acceptors that answered show no majority for one ballot."""
    if knower is not None:
        who = f"learner {knower.learner_id} knows it"
        if knower.applied and not knower.HasField("value"):
            who += " (applied; it keeps no copy of the value)"
    else:
        who = f"the log is chosen through instance {log_chosen_through}"
    value: pb.ExplainedValue | None = None
    ballot: pb.Ballot | None = None
    if knower is not None and knower.HasField("value"):
        value, ballot = knower.value, knower.ballot
    elif tally.votes and tally.majority_answered:
        # Every ballot above the chosen one carries the chosen value, and
        # any majority includes an acceptor that accepted the chosen ballot.
        top = tally.votes[max(tally.votes)][0]
        value, ballot = top.accepted_value, top.accepted_ballot
    shown = f" ({describe_value(value)})" if value is not None else ""
    why = (
        "a later ballot re-proposed the value to some of them"
        if tally.majority_answered
        else "too few of them answered"
    )
    return Verdict(
        pb.INSTANCE_VERDICT_CHOSEN,
        f"chosen{shown}: {who}; the acceptors that answered show no majority for one "
        f"ballot ({why}){tally.down_note}",
        value,
        ballot,
    )


def _why_nothing_accepted(
    instance: int,
    promised: Sequence[pb.AcceptorInstanceState],
    top_promise: tuple[int, int] | None,
    log_next_instance: int,
) -> str:
    """Why no acceptor accepted anything: no promise, or whose promise went unused."""
    if top_promise is None:
        return (
            "; no acceptor has promised a ballot for it: nothing was proposed for "
            f"instance {instance}"
        )
    holders = [a for a in promised if _key(a.promised_ballot) == top_promise]
    ballot_text = _ballot(holders[0].promised_ballot)
    by_range = all(
        a.HasField("range_promised_ballot") and _key(a.range_promised_ballot) == top_promise
        for a in holders
    )
    if not by_range:
        return (
            f"; {_ids('acceptor', [a.acceptor_id for a in holders])} promised ballot "
            f"{ballot_text}, but its proposer's Accept never reached them (it may "
            "have crashed between the phases, or is still running)"
        )
    why = (
        f"; {_ids('acceptor', [a.acceptor_id for a in holders])} promised ballot "
        f"{ballot_text} to the log leader for every instance from "
        f"{holders[0].range_from_instance}, and no Accept for this one arrived"
    )
    if log_next_instance and instance >= log_next_instance:
        why += f": the log has not reached it (next instance {log_next_instance})"
    return why


def _stuck(tally: _Tally, accepted_note: str, top_promise: tuple[int, int] | None) -> Verdict:
    """A majority answered, some accepted, but no ballot has a majority."""
    highest_accepted = max(tally.votes)
    empty = [a.acceptor_id for a in tally.answered if not a.HasField("accepted_ballot")]
    parts = [
        f"stuck: no ballot has a majority ({tally.quorum} of {tally.total} needed): {accepted_note}"
    ]
    if empty:
        parts.append(f"{_ids('acceptor', empty)} accepted nothing")
    if top_promise is not None and top_promise > highest_accepted:
        parts.append(
            f"ballot {top_promise[0]}.{top_promise[1]} is promised but was accepted nowhere: "
            "its proposer did not get its Accepts to a majority (it may have crashed, or "
            "is still running)"
        )
    summary = "; ".join(parts) + tally.down_note
    summary += (
        ". Proposing again for this instance finishes it: a new ballot adopts the "
        "highest-ballot value a majority reports (a log leader does this by itself)"
    )
    return Verdict(pb.INSTANCE_VERDICT_STUCK, summary)
