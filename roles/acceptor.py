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

``i'`` is ``min(i, j)``, or ``j`` when there was no range promise (``r`` ZERO):
the range never shrinks. The PromiseRange reports the accepted ``(a, v)`` of
every instance >= ``j``. Nothing changes, and the step raises instead of
replying, for an Accept(n, w) with ``n == a`` and ``w != v`` (one ballot, two
values) and for a zero ballot or an instance < 1 (:class:`ProtocolError`), and
for an instance, or a PrepareRange's first instance, <= M (:class:`NotVoting`,
below).

The acceptor keeps one :class:`AcceptorState` per instance. Every step returns
the new state, the reply and whether the state changed. **The caller must make a
changed state durable before sending the reply**: an acceptor that forgets a
promise after a crash can let two values be chosen.

Promising only a *strictly* higher ballot also makes ballots safe to reuse
after a proposer restart: a ballot that already won phase 1 at one majority
can never win it again at another, because the two majorities intersect.

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
from roles.errors import NotVoting, ProtocolError
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
        self, state: AcceptorState, msg: Prepare, floor: Ballot = ZERO_BALLOT
    ) -> AcceptorStep:
        """``floor`` is the range promise's ballot for this instance, if any."""
        _check_ballot(msg.ballot, msg.instance)
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
        self, state: AcceptorState, msg: Accept, floor: Ballot = ZERO_BALLOT
    ) -> AcceptorStep:
        """``floor`` is the range promise's ballot for this instance, if any."""
        _check_ballot(msg.ballot, msg.instance)
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
    ) -> RangeStep:
        """Promise ``msg.ballot`` for every instance >= ``msg.from_instance``.

        ``states`` must hold every instance >= ``msg.from_instance`` that has
        state (others are fresh). The ballot must beat the range promise and
        every one of those instances' own promises.
        """
        _check_ballot(msg.ballot, msg.from_instance)
        self._check_votes_on(msg.from_instance, "PrepareRange")
        highest = range_promise.ballot
        for instance, state in states.items():
            if instance >= msg.from_instance and state.promised_ballot > highest:
                highest = state.promised_ballot
        if msg.ballot <= highest:
            reject = Reject(msg.from_instance, msg.ballot, self.acceptor_id, highest)
            return RangeStep(range_promise, reject, persist=False)
        start = msg.from_instance
        if not range_promise.ballot.is_zero:
            # Never shrink: instances the old promise covered stay covered.
            start = min(start, range_promise.from_instance)
        accepted = tuple(
            Accepted(instance, state.accepted_ballot, self.acceptor_id, state.accepted_value)
            for instance, state in sorted(states.items())
            if instance >= msg.from_instance and state.accepted_value is not None
        )
        promise = PromiseRange(msg.from_instance, msg.ballot, self.acceptor_id, accepted)
        return RangeStep(RangePromise(start, msg.ballot), promise, persist=True)

    def _reject(
        self, instance: int, ballot: Ballot, state: AcceptorState, floor: Ballot = ZERO_BALLOT
    ) -> Reject:
        return Reject(instance, ballot, self.acceptor_id, max(state.promised_ballot, floor))


def _check_ballot(ballot: Ballot, instance: int) -> None:
    if ballot.is_zero:
        raise ProtocolError(f"instance {instance}: the zero ballot is never valid")
    if instance < 1:
        raise ProtocolError(f"instance must be >= 1, got {instance}")
