"""Leader election, the follower's side: the election timer and pre-vote.

A heartbeat is *valid* when its ballot is at least the highest ballot this
proposer has seen or issued; a follower campaigns when no valid heartbeat came
for a random time in ``[T, 2T)`` (``T = election_timeout``), so that followers
rarely time out together.

Pre-vote (Raft's PreVote, adapted to Paxos): when its election timer fires, a
follower does not raise its round at once. It first asks every acceptor which
proposer last had a value accepted there and how long ago
(:class:`~roles.leader_effects.AskLeaderContact`); an acceptor *grants* unless
another proposer did so less than ``election_timeout`` ago. Only with a
majority of grants does it campaign. A proposer that is cut off (or can send
but not receive) therefore never gets to raise its round, and cannot depose a
working leader when the network heals; a leader that stops getting values
accepted is replaced as before, one round trip later. Safety does not depend
on it: it only delays campaigns. An idle leader has nothing accepted, so at
idle a follower that misses its heartbeats may still take over, which costs
nothing in flight.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from roles.effects import NEVER
from roles.leader_effects import AskLeaderContact
from roles.quorum import is_quorum
from roles.rng import RandomSource


@dataclass(slots=True)
class Election:
    """When a follower campaigns, and the pre-vote round it holds first."""

    #: When the election timer fires (NEVER while campaigning or leading).
    at: float = NEVER
    #: The pre-vote round in progress, if ``prevoting``.
    seq: int = 0
    prevoting: bool = False
    #: The acceptors that granted round ``seq``.
    grants: set[int] = field(default_factory=set)

    def arm(self, now: float, rng: RandomSource, timeout: float) -> None:
        """Campaign a random time in ``[T, 2T)`` from ``now`` (``T``: ``timeout``)."""
        self.at = now + rng.uniform(timeout, 2 * timeout)

    def pre_vote(self, now: float, rng: RandomSource, timeout: float) -> AskLeaderContact:
        """Ask the acceptors whether a leader is at work; if no majority grants
        before the election timer fires again, ask again then."""
        self.seq += 1
        self.prevoting = True
        self.grants = set()
        self.arm(now, rng, timeout)
        return AskLeaderContact(self.seq)

    def is_current(self, seq: int) -> bool:
        """True when ``seq`` is the pre-vote round in progress."""
        return self.prevoting and seq == self.seq

    def grant(self, acceptor_id: int, acceptor_ids: frozenset[int]) -> bool:
        """Count ``acceptor_id``'s grant; True once a majority granted."""
        self.grants.add(acceptor_id)
        return is_quorum(self.grants, acceptor_ids)
