"""The learner: finds out which value is chosen.

A value is chosen for an instance once a majority of acceptors has accepted the
same ballot (they then necessarily accepted the same value). A learner counts
:class:`Accepted` messages per ballot, or is simply told by :class:`Decide`
from a proposer that saw the majority itself. Acceptance is a fact about the
past, so votes may be counted in any order and at any time: an acceptor that
later accepts a higher ballot does not undo an earlier majority.

Once an instance is decided its tallies are dropped; only the decision is kept.
Two different decisions for one instance raise :class:`SafetyViolation`.
"""

from __future__ import annotations

from dataclasses import dataclass

from roles.ballot import Ballot
from roles.errors import ProtocolError, SafetyViolation
from roles.messages import Accepted, Decide
from roles.quorum import is_quorum


@dataclass(frozen=True, slots=True)
class Learned:
    """``value`` is chosen for ``instance`` (first learned under ``ballot``)."""

    instance: int
    ballot: Ballot
    value: bytes


@dataclass(slots=True)
class _Tally:
    value: bytes
    voters: set[int]


class Learner:
    """Learns decisions for any number of instances of one acceptor set."""

    def __init__(self, acceptor_ids: frozenset[int]) -> None:
        if not acceptor_ids:
            raise ValueError("a learner needs at least one acceptor")
        self.acceptor_ids = acceptor_ids
        self._decisions: dict[int, Learned] = {}
        self._tallies: dict[int, dict[Ballot, _Tally]] = {}

    def decision(self, instance: int) -> Learned | None:
        return self._decisions.get(instance)

    @property
    def decided_instances(self) -> int:
        return len(self._decisions)

    def on_accepted(self, msg: Accepted) -> Learned | None:
        """Count one acceptor's vote. Returns the decision when this vote (or an
        earlier one) completes a majority; None while undecided."""
        _check_instance(msg.instance)
        if msg.acceptor_id not in self.acceptor_ids:
            raise ProtocolError(f"Accepted from unknown acceptor {msg.acceptor_id}")
        if msg.ballot.is_zero:
            raise ProtocolError(f"instance {msg.instance}: Accepted with the zero ballot")
        decided = self._decisions.get(msg.instance)
        if decided is not None:
            return decided
        tallies = self._tallies.setdefault(msg.instance, {})
        tally = tallies.get(msg.ballot)
        if tally is None:
            tally = tallies[msg.ballot] = _Tally(msg.value, set())
        elif tally.value != msg.value:
            raise ProtocolError(
                f"instance {msg.instance}: two values accepted under ballot {msg.ballot}"
            )
        tally.voters.add(msg.acceptor_id)
        if is_quorum(tally.voters, self.acceptor_ids):
            return self._decide(Learned(msg.instance, msg.ballot, msg.value))
        return None

    def on_decide(self, msg: Decide) -> Learned:
        """Record a decision a proposer observed."""
        _check_instance(msg.instance)
        if msg.ballot.is_zero:
            raise ProtocolError(f"instance {msg.instance}: Decide with the zero ballot")
        return self._decide(Learned(msg.instance, msg.ballot, msg.value))

    def _decide(self, learned: Learned) -> Learned:
        known = self._decisions.get(learned.instance)
        if known is not None:
            if known.value != learned.value:
                raise SafetyViolation(
                    f"instance {learned.instance}: {known.value!r} was chosen under "
                    f"{known.ballot}, now told {learned.value!r} under {learned.ballot}"
                )
            return known
        self._decisions[learned.instance] = learned
        self._tallies.pop(learned.instance, None)
        return learned


def _check_instance(instance: int) -> None:
    if instance < 1:
        raise ProtocolError(f"instance must be >= 1, got {instance}")
