"""Identity safety, the pure part: when a new acceptor file may vote, and how an
acceptor that lost its storage is rebuilt from its peers.

An acceptor that forgets what it promised or accepted, and votes again as its
old self, can let two values be chosen. So every acceptor's file carries an
*incarnation* (a random id made when the file is created), and every acceptor
durably records the incarnation it has seen for each of its peers. The I/O
(the ``Introduce`` and ``GetRecoveryInfo`` RPCs, the retry loops, the files)
lives in :mod:`paxos_service.node.identity`, with the full safety argument; this
module holds only the decisions, so that they can be tested exhaustively:

* :func:`decide_join`: a new file (status JOINING) may vote only once *every*
  peer has answered and none knows another incarnation for its id. One peer
  that knows another incarnation proves the id voted before with a file that
  is now gone (WIPED).
* :func:`plan_recovery`: the state a rebuilt acceptor starts from, computed
  from every peer's :class:`RecoveryInfo`: a range promise from instance 1 at
  the highest ballot any peer promised (the *floor*), and the highest
  instance any peer accepted a value for (``no_vote_through``, M), which it
  never votes on again (:meth:`roles.acceptor.Acceptor.votes_on`).
* :func:`summarize`: what one acceptor reports about itself for that.
"""

from __future__ import annotations

import enum
from collections.abc import Collection, Mapping
from dataclasses import dataclass

from roles.acceptor import AcceptorState, RangePromise
from roles.ballot import ZERO_BALLOT, Ballot


class AcceptorStatus(enum.Enum):
    """The lifecycle of one acceptor: whether it votes, and if not, why.

    One enum for the file, the process and the wire. A file stores JOINING,
    VOTING, RECOVERING or RETIRED; the process adds what it learns while it
    runs (CONFIRMING, WIPED, STORAGE_FAILED); ``pb.AcceptorStatus`` carries
    each as ``ACCEPTOR_STATUS_<NAME>``."""

    #: A new file. It does not vote until every peer vouched that its id is new.
    JOINING = "joining"
    #: An existing file, restarted: it does not vote until a peer confirms
    #: that its incarnation is still the one the cluster knows.
    CONFIRMING = "confirming"
    #: Votes. (Files from before identity tracking have no status: VOTING.)
    VOTING = "voting"
    #: A new file whose id voted before: its data was lost. Never votes until
    #: ``paxos acceptor recover`` rebuilds it.
    WIPED = "wiped"
    #: ``paxos acceptor recover`` wrote the rebuilt state but has not yet told
    #: every peer the new incarnation. Does not vote; run recover again.
    RECOVERING = "recovering"
    #: A peer knows another incarnation for this id: the id was recovered
    #: elsewhere. Never votes again.
    RETIRED = "retired"
    #: Storage failed while recording an identity; votes again once restarted
    #: on healthy storage.
    STORAGE_FAILED = "failed"


@dataclass(frozen=True, slots=True)
class Introduction:
    """A peer's answer to ``Introduce(acceptor_id, incarnation)``."""

    peer_id: int
    #: The incarnation the peer knew for the introduced id before this call;
    #: "" if it knew none (it has now recorded the introduced one).
    known_incarnation: str
    #: The peer has promised or accepted something.
    has_state: bool


class JoinVerdict(enum.Enum):
    #: Some peers have not answered yet: ask again later.
    WAIT = "wait"
    #: Every peer vouched that this id is new (or knows this very file): vote.
    VOTE = "vote"
    #: This id voted before with a file that is gone: never vote as it.
    WIPED = "wiped"


@dataclass(frozen=True, slots=True)
class JoinDecision:
    verdict: JoinVerdict
    #: For the operator's log: why.
    reason: str
    #: Peers that have not answered (WAIT).
    missing: tuple[int, ...] = ()
    #: Peers that know another incarnation for this id: peer -> incarnation.
    conflicts: Mapping[int, str] | None = None


def decide_join(
    acceptor_id: int,
    incarnation: str,
    peer_ids: Collection[int],
    answers: Mapping[int, Introduction],
) -> JoinDecision:
    """May the new file ``incarnation`` of acceptor ``acceptor_id`` vote?

    ``answers`` holds the first answer of each peer that has answered.

    * Any peer knows a different incarnation for this id: WIPED. The id has
      voted before, with a file this one does not remember.
    * Otherwise, some peers have not answered: WAIT. A peer that is down may
      be the only one that knows the old incarnation.
    * Every peer answered, but one that has promised or accepted something had
      never heard of this id: WIPED too. In a cluster that ran with identity
      tracking every voting acceptor knows every peer (it records them while it
      joins), so this is a cluster that ran without it (an upgrade, or no
      ``--acceptors``), and the id may well have voted.
    * Otherwise: VOTE.
    """
    peers = frozenset(peer_ids)
    if not incarnation:
        raise ValueError("the incarnation must not be empty")
    if acceptor_id in peers:
        raise ValueError(f"acceptor {acceptor_id} cannot be its own peer")
    strangers = set(answers) - peers
    if strangers:
        raise ValueError(f"answers from acceptors that are not peers: {sorted(strangers)}")
    for peer, answer in answers.items():
        if answer.peer_id != peer:
            raise ValueError(f"answer filed under {peer} is from {answer.peer_id}")

    conflicts = {
        peer: a.known_incarnation
        for peer, a in sorted(answers.items())
        if a.known_incarnation and a.known_incarnation != incarnation
    }
    if conflicts:
        known = ", ".join(f"acceptor {p} knows {inc}" for p, inc in conflicts.items())
        return JoinDecision(
            JoinVerdict.WIPED,
            f"acceptor {acceptor_id}'s data was lost: its peers know another incarnation "
            f"({known}), and this file is new ({incarnation})",
            conflicts=conflicts,
        )
    missing = tuple(sorted(peers - set(answers)))
    if missing:
        return JoinDecision(
            JoinVerdict.WAIT,
            f"waiting for acceptors {', '.join(map(str, missing))} to vouch that acceptor "
            f"{acceptor_id} is new",
            missing=missing,
        )
    unaware = sorted(peer for peer, a in answers.items() if a.has_state and not a.known_incarnation)
    if unaware:
        return JoinDecision(
            JoinVerdict.WIPED,
            f"acceptor {acceptor_id} may have lost its data: acceptors "
            f"{', '.join(map(str, unaware))} have voted but had no record of it (the cluster "
            f"ran without identity tracking), and this file is new ({incarnation})",
            conflicts={},
        )
    return JoinDecision(
        JoinVerdict.VOTE, f"every peer vouched that acceptor {acceptor_id} is new ({incarnation})"
    )


@dataclass(frozen=True, slots=True)
class RecoveryInfo:
    """What one peer reports for the recovery of another acceptor."""

    peer_id: int
    incarnation: str
    #: Whether it votes; ``status`` says why not ("joining", "wiped", ...).
    voting: bool
    #: The highest ballot it promised: over every instance and its range promise.
    promised_ballot: Ballot
    #: The highest instance it has accepted a value for (0: none).
    highest_accepted_instance: int
    #: Its own no-vote-through instance, if it was itself recovered (else 0).
    no_vote_through: int
    #: The incarnation it knows for the acceptor being recovered ("" if none).
    known_incarnation: str = ""
    status: str = "voting"


@dataclass(frozen=True, slots=True)
class RecoveryPlan:
    """The state a rebuilt acceptor starts from."""

    #: Promised for every instance: the highest ballot any peer promised.
    floor: Ballot
    #: The highest instance any peer accepted a value for (or may have: its own
    #: no_vote_through). The rebuilt acceptor never votes on instances <= it.
    no_vote_through: int

    @property
    def range_promise(self) -> RangePromise:
        return RangePromise(1, self.floor) if not self.floor.is_zero else RangePromise()


class RecoveryRefused(ValueError):
    """Recovery cannot be done safely now; the message says why."""


def plan_recovery(
    acceptor_id: int, peer_ids: Collection[int], infos: Mapping[int, RecoveryInfo]
) -> RecoveryPlan:
    """The rebuilt state of acceptor ``acceptor_id`` from EVERY peer's report.

    Safety needs every peer, not a majority: the value the lost acceptor helped
    choose may be known to a single one of them. And every peer must be voting:
    one that is itself joining or wiped knows nothing.

    A peer that was itself recovered reports its own ``no_vote_through``,
    which counts as accepted: it stands for values that peer's lost self may
    have accepted.
    """
    peers = frozenset(peer_ids)
    if acceptor_id in peers:
        raise ValueError(f"acceptor {acceptor_id} cannot be its own peer")
    if not peers:
        raise RecoveryRefused(
            "a single acceptor cannot be recovered: no other acceptor remembers what it promised"
        )
    missing = sorted(peers - set(infos))
    if missing:
        raise RecoveryRefused(
            f"recovery needs every other acceptor; no answer from {_ids(missing)}"
        )
    strangers = sorted(set(infos) - peers)
    if strangers:
        raise ValueError(f"reports from acceptors that are not peers: {strangers}")
    not_voting = sorted(p for p, info in infos.items() if not info.voting)
    if not_voting:
        detail = ", ".join(f"acceptor {p} is {infos[p].status}" for p in not_voting)
        raise RecoveryRefused(
            f"recovery needs every other acceptor voting ({detail}); with more than one "
            "acceptor's data lost, what they chose together may be known to nobody"
        )
    floor = max((info.promised_ballot for info in infos.values()), default=ZERO_BALLOT)
    through = max(
        max(info.highest_accepted_instance, info.no_vote_through) for info in infos.values()
    )
    return RecoveryPlan(floor=floor, no_vote_through=through)


def summarize(
    states: Mapping[int, AcceptorState], range_promise: RangePromise
) -> tuple[Ballot, int]:
    """An acceptor's highest promised ballot (per instance or range) and the
    highest instance it has accepted a value for (0: none). A negative key is
    a single-decree instance (the service keeps instance k of that space under
    -k): it counts as instance k, so that M covers both spaces."""
    promised = range_promise.ballot
    highest_accepted = 0
    for instance, state in states.items():
        promised = max(promised, state.promised_ballot)
        if state.accepted_value is not None:
            highest_accepted = max(highest_accepted, abs(instance))
    return promised, highest_accepted


def _ids(ids: list[int]) -> str:
    return ("acceptor " if len(ids) == 1 else "acceptors ") + ", ".join(map(str, ids))
