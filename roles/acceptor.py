"""The acceptor: the memory of Paxos.

Rules ("Paxos Made Simple", section 2.2, with the usual strengthening):

    Prepare(n):  if n > promised_ballot   -> promised_ballot := n; Promise(n, accepted)
                 else                      -> Reject(promised_ballot)
    Accept(n,v): if n >= promised_ballot  -> promised_ballot := n;
                                             accepted := (n, v); Accepted(n, v)
                 else                      -> Reject(promised_ballot)

Multi-Paxos ("Paxos Made Simple", section 3) adds one acceptor-wide promise,
the :class:`RangePromise`: PrepareRange(n, b) promises b for every instance
>= n at once. Each instance's effective promise is the higher of its own
promised_ballot and the range promise's ballot (the ``floor``), and the range
promise only ever grows: a higher ballot, over the union of the two ranges.

State table, in the manner of h11's. One instance's state is ``(p, a, v)``:
promised ballot, accepted ballot and value (ZERO and None until something is
accepted); ``P = max(p, floor)`` is its effective promise. The range promise
is ``(i, r)``; ``H`` is the highest of ``r`` and the ``p`` of every instance
>= the PrepareRange's first instance ``j``::

    state      message             if      next state  reply             persist
    ---------  ------------------  ------  ----------  ----------------  ----------
    (p, a, v)  Prepare(n)          n > P   (n, a, v)   Promise(n, a, v)  yes
    (p, a, v)  Prepare(n)          n <= P  unchanged   Reject(P)         no
    (p, a, v)  Accept(n, w)        n >= P  (n, n, w)   Accepted(n, w)    if changed
    (p, a, v)  Accept(n, w)        n < P   unchanged   Reject(P)         no
    (i, r)     PrepareRange(j, n)  n > H   (i', n)     PromiseRange      yes
    (i, r)     PrepareRange(j, n)  n <= H  unchanged   Reject(H)         no
    (i, n)     PrepareRange(j, n,  n >= H  unchanged   PromiseRange      no
                 page_from=q)                          (the next page)
    (i, r)     PrepareRange(j, n,  n < H   unchanged   Reject(H)         no
                 page_from=q)

``i'`` is ``min(i, j)``, or ``j`` when there was no range promise (``r`` ZERO):
the range never shrinks. The PromiseRange reports the accepted ``(a, v)`` of
every instance >= ``j``, except those the acceptor knows are chosen (below),
in pages. Nothing changes, and the step raises instead of replying, for an
Accept(n, w) with ``n == a`` and ``w != v`` (one ballot, two values), for a
page asked under a ballot this acceptor never promised (``r < n``), and for a
zero ballot or an instance < 1 (:class:`ProtocolError`), and for an instance,
or a PrepareRange's first instance, <= M (:class:`NotVoting`, below).

A bounded phase 1. A leader's Accept carries ``chosen_through`` C: every
instance <= C is chosen. The acceptor keeps the highest C it heard (the
caller stores it) and a PromiseRange neither reports the instances <= C nor
lets their promises count in ``H``; it says C instead. Safe because an
instance that is chosen needs no phase 1: the leader that collects a majority
of promises proposes nothing at or below the highest C among them (every
instance above that one was reported by every acceptor of the majority), and
any acceptor's C is a fact, whoever's promise it came with. So a restarted
leader reads back only the unchosen suffix, not the history.

The report is paged so that no reply outgrows a message: at most
``page_bytes`` per page (at least one entry). The next page is
asked with ``page_from``, under the same ballot. It reads the acceptor's state
later than the promise, which is safe: after promising n over the range, an
acceptor accepts no ballot below n there, and accepts a ballot above n only
after promising it, which makes ``H > n`` and the page a Reject. So for every
ballot below n, the later read sees exactly what the promise saw. Only the
proposer that holds the promise asks for pages: a restarted incarnation
reusing the ballot never gets the first page (``n <= H``), so never a page.

The acceptor keeps one :class:`AcceptorState` per instance. Every step returns
the new state, the reply and whether the state changed. **The caller must make a
changed state durable before sending the reply**: an acceptor that forgets a
promise after a crash can let two values be chosen.

Promising only a *strictly* higher ballot also makes ballots safe to reuse
after a proposer restart: a ballot that already won phase 1 at one majority
can never win it again at another, because the two majorities intersect.

Compaction (:mod:`roles.compaction`). Below the cluster's compaction point
T (``Accept.compact_through``; the caller keeps the highest and deletes the
votes through it) every log instance is chosen and in the learners'
snapshots. Prepare and Accept there raise :class:`Compacted` carrying T and
change nothing: no vote there is ever needed again. A PromiseRange never
reports them either, since T <= the ``chosen_through`` sent with it.

An acceptor rebuilt after losing its storage (see :mod:`roles.recovery`) has
a ``no_vote_through`` instance M: it never votes again on an instance <= M,
because its lost self may have voted there. Prepare and Accept for such an
instance, and PrepareRange from such an instance, raise :class:`NotVoting`
and change nothing. (A range promise from n > M is fine: it says nothing
about the instances below n.)
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from roles.ballot import ZERO_BALLOT, Ballot
from roles.errors import Compacted, NotVoting, ProtocolError
from roles.messages import (
    Accept,
    Accepted,
    AcceptorReply,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    Reject,
)


@dataclass(frozen=True, slots=True)
class AcceptorState:
    """What one acceptor remembers about one instance."""

    promised_ballot: Ballot = ZERO_BALLOT
    accepted_ballot: Ballot = ZERO_BALLOT
    accepted_value: bytes | None = None

    def __post_init__(self) -> None:
        if self.accepted_ballot > self.promised_ballot:
            raise ValueError("accepted_ballot can never exceed promised_ballot")
        if self.accepted_ballot.is_zero != (self.accepted_value is None):
            raise ValueError("accepted_value is set exactly when accepted_ballot is")


@dataclass(frozen=True, slots=True)
class RangePromise:
    """The acceptor-wide Multi-Paxos promise: ``ballot`` for every instance >=
    ``from_instance``. ZERO ballot means there is none."""

    from_instance: int = 1
    ballot: Ballot = ZERO_BALLOT

    def floor(self, instance: int) -> Ballot:
        """The ballot this promise imposes on ``instance``."""
        return self.ballot if instance >= self.from_instance else ZERO_BALLOT


@dataclass(frozen=True, slots=True)
class RangeStep:
    """The result of a PrepareRange: the new range promise, the reply, and
    whether it changed (persist before replying, as always)."""

    range_promise: RangePromise
    reply: PromiseRange | Reject
    persist: bool


@dataclass(frozen=True, slots=True)
class AcceptorStep:
    """The result of one message: the new state, the reply, and whether the state
    changed (``persist``). If it did, persist before replying."""

    state: AcceptorState
    reply: AcceptorReply
    persist: bool


class Acceptor:
    """Pure acceptor logic for the acceptor ``acceptor_id``. It holds no state of
    its own: the caller passes each instance's state in and stores the result."""

    def __init__(self, acceptor_id: int, no_vote_through: int = 0) -> None:
        if no_vote_through < 0:
            raise ValueError(f"no_vote_through must be >= 0, got {no_vote_through}")
        self.acceptor_id = acceptor_id
        #: Instances 1..no_vote_through are never voted on (0: none).
        self.no_vote_through = no_vote_through

    def votes_on(self, instance: int) -> bool:
        """False for the instances this acceptor must never vote on again."""
        return instance > self.no_vote_through

    def _check_votes_on(self, instance: int, what: str) -> None:
        if not self.votes_on(instance):
            raise NotVoting(
                f"acceptor {self.acceptor_id} is recovering: it does not vote on instances "
                f"<= {self.no_vote_through} ({what} for instance {instance})"
            )

    def on_prepare(
        self,
        state: AcceptorState,
        msg: Prepare,
        floor: Ballot = ZERO_BALLOT,
        *,
        compacted_through: int = 0,
    ) -> AcceptorStep:
        """``floor`` is the range promise's ballot for this instance, if any;
        ``compacted_through`` the compaction point of the instance's space."""
        _check_ballot(msg.ballot, msg.instance)
        _check_not_compacted(msg.instance, compacted_through)
        self._check_votes_on(msg.instance, "Prepare")
        if msg.ballot > max(state.promised_ballot, floor):
            new = AcceptorState(msg.ballot, state.accepted_ballot, state.accepted_value)
            promise = Promise(
                instance=msg.instance,
                ballot=msg.ballot,
                acceptor_id=self.acceptor_id,
                accepted_ballot=state.accepted_ballot,
                accepted_value=state.accepted_value,
            )
            return AcceptorStep(new, promise, persist=True)
        reject = self._reject(msg.instance, msg.ballot, state, floor)
        return AcceptorStep(state, reject, persist=False)

    def on_accept(
        self,
        state: AcceptorState,
        msg: Accept,
        floor: Ballot = ZERO_BALLOT,
        *,
        compacted_through: int = 0,
    ) -> AcceptorStep:
        """``floor`` is the range promise's ballot for this instance, if any;
        ``compacted_through`` the compaction point of the instance's space."""
        _check_ballot(msg.ballot, msg.instance)
        _check_not_compacted(msg.instance, compacted_through)
        self._check_votes_on(msg.instance, "Accept")
        if msg.ballot < max(state.promised_ballot, floor):
            reject = self._reject(msg.instance, msg.ballot, state, floor)
            return AcceptorStep(state, reject, persist=False)
        if msg.ballot == state.accepted_ballot and msg.value != state.accepted_value:
            # A proposer sends exactly one value per ballot; two means a broken peer.
            raise ProtocolError(
                f"instance {msg.instance}: ballot {msg.ballot} already carries another value"
            )
        new = AcceptorState(msg.ballot, msg.ballot, msg.value)
        accepted = Accepted(msg.instance, msg.ballot, self.acceptor_id, msg.value)
        # A duplicate Accept leaves the state as it was: nothing new to persist.
        return AcceptorStep(new, accepted, persist=new != state)

    def on_prepare_range(
        self,
        range_promise: RangePromise,
        states: Mapping[int, AcceptorState],
        msg: PrepareRange,
        *,
        chosen_through: int = 0,
        compacted_through: int = 0,
        page_bytes: int | None = None,
    ) -> RangeStep:
        """Promise ``msg.ballot`` for every instance >= ``msg.from_instance``,
        or report the next page of that promise (``msg.page_from`` > 0).

        ``states`` must hold every instance from :func:`report_start` on that
        has state (others are fresh); ``chosen_through`` is the highest
        ``Accept.chosen_through`` this acceptor heard (or 0, to report the
        chosen too), ``compacted_through`` its compaction point: what is
        compacted is never reported (its votes may be half deleted) and the
        promise says it is chosen, whatever ``chosen_through``. The ballot must beat
        (for a page: match) the range promise and every one of those
        instances' own promises.
        """
        _check_ballot(msg.ballot, msg.from_instance)
        self._check_votes_on(msg.from_instance, "PrepareRange")
        chosen_through = max(chosen_through, compacted_through)
        if msg.page_from and (
            msg.page_from < msg.from_instance or range_promise.ballot < msg.ballot
        ):
            raise ProtocolError(
                f"a page from {msg.page_from} of a promise of {msg.ballot} from "
                f"{msg.from_instance} that acceptor {self.acceptor_id} never made"
            )
        start = report_start(msg, chosen_through)
        highest = range_promise.ballot
        for instance, state in states.items():
            if instance >= start and state.promised_ballot > highest:
                highest = state.promised_ballot
        refused = msg.ballot < highest if msg.page_from else msg.ballot <= highest
        if refused:
            reject = Reject(msg.from_instance, msg.ballot, self.acceptor_id, highest)
            return RangeStep(range_promise, reject, persist=False)
        accepted, next_page = _page(self.acceptor_id, states, start, page_bytes)
        promise = PromiseRange(
            msg.from_instance,
            msg.ballot,
            self.acceptor_id,
            accepted,
            chosen_through=chosen_through,
            page_from=msg.page_from,
            next_page=next_page,
        )
        if msg.page_from:
            return RangeStep(range_promise, promise, persist=False)
        first = msg.from_instance
        if not range_promise.ballot.is_zero:
            # Never shrink: instances the old promise covered stay covered.
            first = min(first, range_promise.from_instance)
        return RangeStep(RangePromise(first, msg.ballot), promise, persist=True)

    def _reject(
        self, instance: int, ballot: Ballot, state: AcceptorState, floor: Ballot = ZERO_BALLOT
    ) -> Reject:
        return Reject(instance, ballot, self.acceptor_id, max(state.promised_ballot, floor))


def report_start(msg: PrepareRange, chosen_through: int) -> int:
    """The first instance a PromiseRange for ``msg`` reports (and whose
    promise counts): not one the acceptor knows is chosen."""
    return max(msg.page_from or msg.from_instance, chosen_through + 1)


#: What an entry of a page counts for beyond its value: a bound on what its
#: instance, ballot, acceptor id and framing take on the wire.
ENTRY_OVERHEAD = 64


def _page(
    acceptor_id: int,
    states: Mapping[int, AcceptorState],
    start: int,
    page_bytes: int | None,
) -> tuple[tuple[Accepted, ...], int]:
    """The accepted proposals from ``start`` on, in instance order, as many as
    ``page_bytes`` allow (each counts its value and :data:`ENTRY_OVERHEAD`;
    at least one); and the first instance left for the next page (0: none)."""
    entries: list[Accepted] = []
    size = 0
    for instance, state in sorted(states.items()):
        if instance < start or state.accepted_value is None:
            continue
        size += len(state.accepted_value) + ENTRY_OVERHEAD
        if entries and page_bytes is not None and size > page_bytes:
            return tuple(entries), instance
        entries.append(Accepted(instance, state.accepted_ballot, acceptor_id, state.accepted_value))
    return tuple(entries), 0


def _check_not_compacted(instance: int, compacted_through: int) -> None:
    if instance <= compacted_through:
        raise Compacted(instance, compacted_through)


def _check_ballot(ballot: Ballot, instance: int) -> None:
    if ballot.is_zero:
        raise ProtocolError(f"instance {instance}: the zero ballot is never valid")
    if instance < 1:
        raise ProtocolError(f"instance must be >= 1, got {instance}")
