"""Phase 1 for every instance at once ("Paxos Made Simple", section 3).

A candidate sends one ``PrepareRange(chosen_through + 1, ballot)`` for every
instance at once. With a majority of PromiseRange it re-proposes, for every
instance from there to the highest one reported, the value of the highest
accepted ballot among the promises (:func:`adopt`), and a no-op where no
promise reported any (a hole). New commands get instances above that.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

from roles.effects import NEVER
from roles.errors import ProtocolError
from roles.messages import Accepted, PromiseRange
from roles.quorum import is_quorum


@dataclass(slots=True)
class Campaign:
    """A candidate's phase 1: the first instance its PrepareRange covers, and
    the promises for its ballot so far."""

    from_instance: int
    promises: dict[int, PromiseRange] = field(default_factory=dict)
    #: False: backing off before the next round (without pre-vote), or a follower.
    campaigning: bool = False
    #: When phase 1 times out, or that backoff ends.
    deadline: float = NEVER

    def begin(self, from_instance: int, deadline: float) -> None:
        """A new round, for every instance >= ``from_instance``."""
        self.from_instance = from_instance
        self.promises = {}
        self.campaigning = True
        self.deadline = deadline

    def promise(self, msg: PromiseRange, acceptor_ids: frozenset[int]) -> bool:
        """Count ``msg``, a promise for this round; True when it completes a majority."""
        if msg.acceptor_id in self.promises:
            return False
        self.promises[msg.acceptor_id] = msg
        return is_quorum(self.promises, acceptor_ids)

    def won(self, chosen_through: int) -> tuple[dict[int, bytes], int, int]:
        """Phase 1 is through: what phase 2 starts with. Returns the adopted
        values above ``chosen_through``, the highest instance the promises
        reported (instances up to it without a value are holes), and the first
        instance to propose."""
        promises = [self.promises[aid] for aid in sorted(self.promises)]
        reported = [entry.instance for promise in promises for entry in promise.accepted]
        self.promises = {}
        self.deadline = NEVER
        recovered = {i: v for i, v in adopt(promises).items() if i > chosen_through}
        recover_through = max(reported, default=self.from_instance - 1)
        return recovered, recover_through, max(self.from_instance, chosen_through + 1)

    def end(self) -> None:
        """No longer a candidate."""
        self.promises = {}
        self.campaigning = False
        self.deadline = NEVER


def check_promise_range(msg: PromiseRange) -> None:
    """Raise :class:`ProtocolError` unless ``msg`` could come from a correct
    acceptor: it reports only its own votes, from ``from_instance`` on, each
    under a real ballot below the one it promised."""
    if msg.from_instance < 1:
        raise ProtocolError(f"PromiseRange from instance {msg.from_instance}")
    for entry in msg.accepted:
        if entry.acceptor_id != msg.acceptor_id or entry.instance < msg.from_instance:
            raise ProtocolError(f"PromiseRange from {msg.acceptor_id} reports {entry}")
        if entry.ballot.is_zero or entry.ballot >= msg.ballot:
            raise ProtocolError(f"PromiseRange for {msg.ballot} reports {entry}")


def adopt(promises: Iterable[PromiseRange]) -> dict[int, bytes]:
    """Per instance, the value of the highest accepted ballot among the
    promises (P2c, section 2.2, for every instance at once: section 3)."""
    best: dict[int, Accepted] = {}
    for promise in promises:
        for entry in promise.accepted:
            known = best.get(entry.instance)
            if known is None or entry.ballot > known.ballot:
                best[entry.instance] = entry
    return {instance: entry.value for instance, entry in best.items()}
