"""Phase 1 for every instance at once ("Paxos Made Simple", section 3).

A candidate sends one ``PrepareRange(chosen_through + 1, ballot)`` for every
instance at once. With a majority of PromiseRange it re-proposes, for every
instance from there to the highest one reported, the value of the highest
accepted ballot among the promises (:func:`adopt`), and a no-op where no
promise reported any (a hole). New commands get instances above that.

Phase 1 is bounded (see :mod:`roles.acceptor`): each acceptor reports only
what lies above the instances it knows are chosen, and says how far that is;
the candidate takes the highest such point among every page it received as
chosen, and proposes nothing at or below it. A report too long for one
message comes in pages: a promise counts once its last page is in.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field, replace

from roles.effects import NEVER
from roles.errors import ProtocolError
from roles.messages import Accepted, PromiseRange
from roles.quorum import is_quorum


@dataclass(slots=True)
class Campaign:
    """A candidate's phase 1: the first instance its PrepareRange covers, and
    the promises for its ballot so far."""

    from_instance: int
    #: The promises whose every page is in, with all their pages' entries.
    promises: dict[int, PromiseRange] = field(default_factory=dict)
    #: Per acceptor whose promise has more pages: its entries so far, and the
    #: ``page_from`` of the page it owes next.
    pages: dict[int, tuple[list[Accepted], int]] = field(default_factory=dict)
    #: The highest instance any page reported as known chosen.
    chosen_through: int = 0
    #: False: backing off before the next round (without pre-vote), or a follower.
    campaigning: bool = False
    #: When phase 1 times out, or that backoff ends.
    deadline: float = NEVER

    def begin(self, from_instance: int, deadline: float) -> None:
        """A new round, for every instance >= ``from_instance``."""
        self.from_instance = from_instance
        self.promises = {}
        self.pages = {}
        self.chosen_through = 0
        self.campaigning = True
        self.deadline = deadline

    def promise(self, msg: PromiseRange, acceptor_ids: frozenset[int]) -> tuple[bool, int]:
        """Count ``msg``, a page of a promise for this round. Returns whether
        it completes a majority of promises, and the ``page_from`` to ask its
        acceptor for next (0: none). A page out of turn is ignored."""
        entries, expected = self.pages.get(msg.acceptor_id, ([], 0))
        if msg.acceptor_id in self.promises or msg.page_from != expected:
            return False, 0
        self.chosen_through = max(self.chosen_through, msg.chosen_through)
        entries = entries + list(msg.accepted)
        if msg.next_page:
            self.pages[msg.acceptor_id] = (entries, msg.next_page)
            return False, msg.next_page
        self.pages.pop(msg.acceptor_id, None)
        self.promises[msg.acceptor_id] = replace(msg, accepted=tuple(entries), page_from=0)
        return is_quorum(self.promises, acceptor_ids), 0

    def won(self, chosen_through: int) -> tuple[dict[int, bytes], int, int]:
        """Phase 1 is through: what phase 2 starts with. Returns the adopted
        values above ``chosen_through``, the highest instance the promises
        reported (instances up to it without a value are holes), and the first
        instance to propose."""
        promises = [self.promises[aid] for aid in sorted(self.promises)]
        reported = [entry.instance for promise in promises for entry in promise.accepted]
        self.promises = {}
        self.pages = {}
        self.deadline = NEVER
        recovered = {i: v for i, v in adopt(promises).items() if i > chosen_through}
        recover_through = max(reported, default=self.from_instance - 1)
        return recovered, recover_through, max(self.from_instance, chosen_through + 1)

    def end(self) -> None:
        """No longer a candidate."""
        self.promises = {}
        self.pages = {}
        self.campaigning = False
        self.deadline = NEVER


def check_promise_range(msg: PromiseRange) -> None:
    """Raise :class:`ProtocolError` unless ``msg`` could come from a correct
    acceptor: it reports only its own votes, from ``from_instance`` on, each
    under a real ballot below the one it promised, in instance order within
    its page, and a next page (if any) above them."""
    if msg.from_instance < 1 or msg.chosen_through < 0:
        raise ProtocolError(f"PromiseRange from instance {msg.from_instance}")
    if msg.page_from and msg.page_from < msg.from_instance:
        raise ProtocolError(f"PromiseRange page from {msg.page_from} < {msg.from_instance}")
    first = max(msg.from_instance, msg.page_from)
    for entry in msg.accepted:
        if entry.acceptor_id != msg.acceptor_id or entry.instance < first:
            raise ProtocolError(f"PromiseRange from {msg.acceptor_id} reports {entry}")
        first = entry.instance + 1
    if msg.next_page and (not msg.accepted or msg.next_page < first):
        raise ProtocolError(f"PromiseRange's next page {msg.next_page} makes no progress")
    for entry in msg.accepted:
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
