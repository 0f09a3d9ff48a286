"""The effects only the leader returns: what its driver must do after a step.

The three it shares with the single-decree proposer (sending to the acceptors,
the timer, a chosen value) are in :mod:`roles.effects`; :data:`LeaderEffect`
is the union of all it may return.
"""

from __future__ import annotations

from dataclasses import dataclass

from roles.ballot import Ballot
from roles.effects import Chosen, SendToAcceptors, SetTimer
from roles.heartbeat import Heartbeat
from roles.messages import Accept, PrepareRange


@dataclass(frozen=True, slots=True)
class AskLeaderContact:
    """Pre-vote: ask every acceptor who last had a value accepted there and how
    long ago; feed each answer to :meth:`Leader.on_leader_contact` with ``seq``."""

    seq: int


@dataclass(frozen=True, slots=True)
class SendHeartbeat:
    """Send ``heartbeat`` to every peer proposer."""

    heartbeat: Heartbeat


@dataclass(frozen=True, slots=True)
class AnswerHeartbeat:
    """Answer the heartbeat of peer ``to``: the highest ballot we have seen."""

    to: int
    highest_ballot: Ballot


@dataclass(frozen=True, slots=True)
class Assigned:
    """The commands with ``tokens`` are in ``instance``'s value, now in phase 2:
    from here on they may be chosen even if this leader fails."""

    instance: int
    tokens: tuple[int, ...]


@dataclass(frozen=True, slots=True)
class Rejected:
    """The commands with ``tokens`` were never assigned to an instance: the
    client may safely send them again, preferably to ``leader_hint``."""

    tokens: tuple[int, ...]
    leader_hint: int | None
    reason: str


@dataclass(frozen=True, slots=True)
class OutcomeUnknown:
    """The commands with ``tokens`` were assigned but this proposer stopped
    leading before it knew their instance chosen: they may still be chosen."""

    tokens: tuple[int, ...]
    reason: str


@dataclass(frozen=True, slots=True)
class BecameLeader:
    """Phase 1 succeeded for every instance >= ``from_instance``."""

    ballot: Ballot
    from_instance: int


@dataclass(frozen=True, slots=True)
class SteppedDown:
    """A candidate or leader became a follower (``leader_hint``: who may lead now)."""

    leader_hint: int | None
    reason: str


LeaderEffect = (
    SendToAcceptors[PrepareRange | Accept]
    | AskLeaderContact
    | SendHeartbeat
    | AnswerHeartbeat
    | SetTimer
    | Chosen
    | Assigned
    | Rejected
    | OutcomeUnknown
    | BecameLeader
    | SteppedDown
)
