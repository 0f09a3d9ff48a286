"""The learner: finds out which value is chosen.

A value is chosen for an instance once a majority of acceptors has accepted the
same ballot (they then necessarily accepted the same value). A learner counts
:class:`Accepted` messages per ballot, or is simply told by :class:`Decide`
from a proposer that saw the majority itself. Acceptance is a fact about the
past, so votes may be counted in any order and at any time: an acceptor that
later accepts a higher ballot does not undo an earlier majority.

Once an instance is decided, the votes for its decided value are dropped; only
the decision is kept. Votes for any *other* value are still counted, because a
learner is the one place where a violation of Paxos safety becomes visible: a
majority (or a :class:`Decide`) for another value than the one already learned
means two values were chosen for one instance. The learner then returns a
:class:`Conflict` naming both, and keeps the first decision. It raises nothing
and does no I/O: the caller (the learner server) decides what to do about it.
In a correct cluster no conflict ever happens, so the votes kept for other
values are only those of ballots that lost (at most one per acceptor and ballot).

State table, in the manner of h11's, per instance (an Accepted is one
acceptor's vote; "a majority": with this vote, a majority of acceptors has
accepted its ballot, now or already)::

    state          input                                next           returns
    -------------  -----------------------------------  -------------  --------------------
    UNDECIDED      Accepted(b, v), no majority yet      UNDECIDED      None
    UNDECIDED      Accepted(b, v), a majority           DECIDED(b, v)  Learned(b, v)
    UNDECIDED      Decide(b, v)                         DECIDED(b, v)  Learned(b, v)
    DECIDED(b, v)  Accepted(_, v) or Decide(_, v)       DECIDED(b, v)  Learned(b, v)
    DECIDED(b, v)  Accepted(c, w), w != v, no majority  DECIDED(b, v)  Learned(b, v)
    DECIDED(b, v)  Accepted(c, w), w != v, a majority   DECIDED(b, v)  Conflict(b, v; c, w)
    DECIDED(b, v)  Decide(c, w), w != v                 DECIDED(b, v)  Conflict(b, v; c, w)

An input with the zero ballot or for an instance < 1, and an Accepted from an
unknown acceptor or with a second value for one ballot, raise
:class:`ProtocolError` and change nothing.
"""

from __future__ import annotations

from dataclasses import dataclass

from roles.ballot import Ballot
from roles.errors import ProtocolError
from roles.messages import Accepted, Decide
from roles.quorum import is_quorum


@dataclass(frozen=True, slots=True)
class Learned:
    """``value`` is chosen for ``instance`` (first learned under ``ballot``)."""

    instance: int
    ballot: Ballot
    value: bytes


@dataclass(frozen=True, slots=True)
class Conflict(Learned):
    """Two different values were chosen for ``instance``: the learner had
    learned ``value`` under ``ballot`` (the inherited fields, which stay the
    decision), and is now shown ``conflicting_value`` chosen under
    ``conflicting_ballot`` (by a majority of Accepted, or a Decide).

    It is a :class:`Learned`, the decision that stands, so that a caller that
    only wants the decision keeps working; a caller that keeps the cluster
    honest checks ``isinstance(result, Conflict)`` and raises the alarm.
    """

    conflicting_ballot: Ballot
    conflicting_value: bytes
    #: What showed the conflicting value: "decide" or "accepted" (a majority).
    source: str

    def describe(self) -> str:
        return (
            f"instance {self.instance}: {_short(self.value)} was chosen under {self.ballot}, "
            f"and {_short(self.conflicting_value)} under {self.conflicting_ballot} "
            f"(shown by {'a Decide' if self.source == 'decide' else 'a majority of Accepted'})"
        )


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

    def on_accepted(self, msg: Accepted) -> Learned | Conflict | None:
        """Count one acceptor's vote. Returns the decision once this vote (or an
        earlier one) completed a majority; None while undecided; a
        :class:`Conflict` when the instance is decided and this vote completes
        (or adds to) a majority for another value."""
        _check_instance(msg.instance)
        if msg.acceptor_id not in self.acceptor_ids:
            raise ProtocolError(f"Accepted from unknown acceptor {msg.acceptor_id}")
        if msg.ballot.is_zero:
            raise ProtocolError(f"instance {msg.instance}: Accepted with the zero ballot")
        decided = self._decisions.get(msg.instance)
        tally = self._tallies.get(msg.instance, {}).get(msg.ballot)
        first_value = tally.value if tally is not None else None
        if decided is not None and msg.ballot == decided.ballot:
            first_value = decided.value
        if first_value is not None and first_value != msg.value:
            raise ProtocolError(
                f"instance {msg.instance}: two values accepted under ballot {msg.ballot}"
            )
        if decided is not None and msg.value == decided.value:
            return decided  # agrees with the decision: nothing left to count
        # Only now change anything: everything above may still raise.
        if tally is None:
            tally = self._tallies.setdefault(msg.instance, {})[msg.ballot] = _Tally(
                msg.value, set()
            )
        tally.voters.add(msg.acceptor_id)
        if not is_quorum(tally.voters, self.acceptor_ids):
            return decided
        return self._decide(Learned(msg.instance, msg.ballot, msg.value), "accepted")

    def on_decide(self, msg: Decide) -> Learned | Conflict:
        """Record a decision a proposer observed. Returns the decision, or a
        :class:`Conflict` (and changes nothing) when another value was learned
        for the instance before."""
        _check_instance(msg.instance)
        if msg.ballot.is_zero:
            raise ProtocolError(f"instance {msg.instance}: Decide with the zero ballot")
        return self._decide(Learned(msg.instance, msg.ballot, msg.value), "decide")

    def _decide(self, learned: Learned, source: str) -> Learned | Conflict:
        known = self._decisions.get(learned.instance)
        if known is not None:
            if known.value != learned.value:
                return Conflict(
                    known.instance,
                    known.ballot,
                    known.value,
                    conflicting_ballot=learned.ballot,
                    conflicting_value=learned.value,
                    source=source,
                )
            return known
        self._decisions[learned.instance] = learned
        # Votes for the decided value are not needed any more; votes for any
        # other value are kept, in case they ever make a majority.
        others = {
            ballot: tally
            for ballot, tally in self._tallies.pop(learned.instance, {}).items()
            if tally.value != learned.value
        }
        if others:
            self._tallies[learned.instance] = others
        return learned


def _short(value: bytes, limit: int = 64) -> str:
    return repr(value[:limit]) + (f" (+{len(value) - limit} bytes)" if len(value) > limit else "")


def _check_instance(instance: int) -> None:
    if instance < 1:
        raise ProtocolError(f"instance must be >= 1, got {instance}")
