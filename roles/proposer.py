"""The proposer: drives one instance from a client's value to a chosen value.

    start ──> PREPARING ──(majority of Promise)──> ACCEPTING ──(majority of Accepted)──> CHOSEN
                  │  ^                                  │
   Reject(higher) │  │ timer                            │ Reject(higher) or phase timeout
   or timeout     v  │                                  v
              BACKING_OFF <─────────────────────────────┘
                  │
   deadline ──────┴──> GAVE_UP   (from any phase but CHOSEN)

Phase 2 proposes the value of the highest-ballot proposal reported in the
promises, or the client's own value if no acceptor of the quorum accepted one
("Paxos Made Simple", section 2.2, P2c). After a rejection the proposer waits a
random backoff (exponential, capped) before a higher round, so duelling
proposers drift apart instead of preempting each other forever.

State table, in the manner of h11's (``b``: the current ballot; "timer": a
call of ``on_timer`` at or after the time of the last :class:`SetTimer`)::

    state         input                            next         effects
    ------------  -------------------------------  -----------  --------------------------------
    (new)         start()                          PREPARING    SendToAcceptors(Prepare), SetTimer
    PREPARING     Promise for b, now a majority    ACCEPTING    SendToAcceptors(Accept), SetTimer
    ACCEPTING     Accepted for b, now a majority   CHOSEN       Chosen
    PREPARING     Reject of b, promised above b,   BACKING_OFF  SetTimer (the backoff)
                  or promised b by an acceptor
                  that has not answered us
    ACCEPTING     Reject of b, promised above b    BACKING_OFF  SetTimer (the backoff)
    PREPARING     timer, before the deadline       BACKING_OFF  SetTimer (the backoff)
    ACCEPTING     timer, before the deadline       BACKING_OFF  SetTimer (the backoff)
    BACKING_OFF   timer, before the deadline       PREPARING    SendToAcceptors(Prepare), SetTimer
    BACKING_OFF   Reject of b, promised above b    BACKING_OFF  none (its round is remembered)
    not finished  timer, at the deadline           GAVE_UP      GaveUp
    not finished  on_timer before the timer        unchanged    SetTimer (the same time again)
    PREPARING     Promise for b, no majority yet   PREPARING    none (the promise is counted)
    ACCEPTING     Accepted for b, no majority yet  ACCEPTING    none (the vote is counted)
    any           any other reply (another ballot, unchanged    none
                  a Reject below b, a phase's reply
                  out of phase, a duplicate)
    CHOSEN        anything                         unchanged    none
    GAVE_UP       anything                         unchanged    none

"(new)" is BACKING_OFF before the first attempt. Each Prepare carries a new
ballot above every round seen; each phase's timer is ``phase_timeout`` away,
the backoff's a random time in ``[0, cap)``, and no timer is later than the
deadline. The Accept carries the value P2c picks, and :class:`Chosen` says
whether it was the client's (``own_value_chosen``).

A reply for another instance or from an unknown acceptor raises
:class:`ProtocolError`, as does an Accepted carrying a value ``b`` never did.

The proposer reads no clock and draws no randomness of its own: every input
carries ``now`` (seconds on any monotonic scale) and randomness comes from the
injected :class:`~roles.rng.RandomSource`. Timers are requested with
:class:`~roles.effects.SetTimer`; the caller calls :meth:`Proposer.on_timer`
when that time has come.
"""

from __future__ import annotations

import enum
from dataclasses import dataclass

from roles.ballot import ZERO_BALLOT, Ballot
from roles.effects import Chosen, SendToAcceptors, SetTimer
from roles.errors import ProtocolError
from roles.messages import Accept, Accepted, Decide, Prepare, Promise, Reject
from roles.quorum import is_quorum
from roles.rng import RandomSource


@dataclass(frozen=True, slots=True)
class ProposerConfig:
    #: Seconds to wait for a quorum of answers before trying a higher ballot.
    phase_timeout: float = 1.0
    #: First backoff cap in seconds; doubles with every failed attempt.
    backoff_base: float = 0.005
    #: Largest backoff in seconds.
    backoff_max: float = 0.5

    def __post_init__(self) -> None:
        bad_backoff = self.backoff_base <= 0 or self.backoff_max < self.backoff_base
        if self.phase_timeout <= 0 or bad_backoff:
            raise ValueError(f"invalid proposer timing: {self!r}")


class Phase(enum.Enum):
    PREPARING = "preparing"
    ACCEPTING = "accepting"
    BACKING_OFF = "backing_off"
    CHOSEN = "chosen"
    GAVE_UP = "gave_up"


@dataclass(frozen=True, slots=True)
class GaveUp:
    """The deadline passed before a value was chosen."""

    instance: int
    reason: str
    last_ballot: Ballot


#: What the caller must do after a step (the first three are shared with the
#: leader, see :mod:`roles.effects`).
Effect = SendToAcceptors[Prepare | Accept] | SetTimer | Chosen | GaveUp
_FINISHED = (Phase.CHOSEN, Phase.GAVE_UP)


class Proposer:
    """Proposes ``value`` for ``instance`` until a value is chosen or ``deadline``."""

    def __init__(
        self,
        *,
        proposer_id: int,
        instance: int,
        value: bytes,
        acceptor_ids: frozenset[int],
        rng: RandomSource,
        deadline: float,
        config: ProposerConfig | None = None,
        min_round: int = 0,
    ) -> None:
        if instance < 1:
            raise ProtocolError(f"instance must be >= 1, got {instance}")
        if not acceptor_ids:
            raise ValueError("a proposer needs at least one acceptor")
        self.proposer_id = proposer_id
        self.instance = instance
        self.value = value
        self.acceptor_ids = acceptor_ids
        self.deadline = deadline
        self.config = config or ProposerConfig()
        self._rng = rng
        self.phase = Phase.BACKING_OFF
        self.ballot = ZERO_BALLOT
        #: The highest round seen anywhere (rejections, promises); the next ballot is above it.
        self.highest_round_seen = min_round
        self.attempts = 0
        self.outcome: Chosen | GaveUp | None = None
        self._timer_at = deadline
        self._promises: dict[int, Promise] = {}
        self._accepted_by: set[int] = set()
        self._proposed_value: bytes | None = None
        self._last_failure = "no attempt made"

    # Inputs -------------------------------------------------------------

    def start(self, now: float) -> list[Effect]:
        """Begin phase 1 with the first ballot."""
        if self.phase is not Phase.BACKING_OFF or self.attempts:
            raise ProtocolError("start() may be called once")
        return self._begin_phase1(now)

    def on_message(self, msg: Promise | Accepted | Reject, now: float) -> list[Effect]:
        """Feed an acceptor's reply. Stale, duplicate or late replies are ignored."""
        if msg.instance != self.instance:
            raise ProtocolError(
                f"reply for instance {msg.instance} sent to the proposer of {self.instance}"
            )
        if msg.acceptor_id not in self.acceptor_ids:
            raise ProtocolError(f"reply from unknown acceptor {msg.acceptor_id}")
        if self.phase in _FINISHED or msg.ballot != self.ballot:
            return []
        if isinstance(msg, Reject):
            return self._on_reject(msg, now)
        if isinstance(msg, Promise):
            return self._on_promise(msg, now)
        return self._on_accepted(msg, now)

    def on_timer(self, now: float) -> list[Effect]:
        """The time requested by the last :class:`SetTimer` may have come."""
        if self.phase in _FINISHED:
            return []
        if now < self._timer_at:
            # Early, or the caller's timer is older than ours: say when again,
            # so that it waits instead of calling back at once (a busy loop).
            return [SetTimer(self._timer_at)]
        if now >= self.deadline:
            if self.phase is not Phase.BACKING_OFF:
                self._last_failure = self._waiting_for()
            return self._give_up()
        if self.phase is Phase.BACKING_OFF:
            return self._begin_phase1(now)
        self._last_failure = self._waiting_for() + f" within {self.config.phase_timeout}s"
        return self._back_off(now)

    # Transitions --------------------------------------------------------

    def _begin_phase1(self, now: float) -> list[Effect]:
        self.attempts += 1
        self.ballot = self.ballot.successor(self.proposer_id, self.highest_round_seen)
        self.highest_round_seen = self.ballot.round
        self.phase = Phase.PREPARING
        self._promises = {}
        self._accepted_by = set()
        self._proposed_value = None
        prepare = Prepare(self.instance, self.ballot)
        return [SendToAcceptors(prepare), self._arm(now + self.config.phase_timeout)]

    def _on_promise(self, msg: Promise, now: float) -> list[Effect]:
        if self.phase is not Phase.PREPARING:
            return []
        self._promises[msg.acceptor_id] = msg
        if not is_quorum(self._promises, self.acceptor_ids):
            return []
        highest = max(self._promises.values(), key=lambda p: p.accepted_ballot)
        if highest.accepted_value is not None:
            self._proposed_value = highest.accepted_value
        else:
            self._proposed_value = self.value
        self.phase = Phase.ACCEPTING
        accept = Accept(self.instance, self.ballot, self._proposed_value)
        return [SendToAcceptors(accept), self._arm(now + self.config.phase_timeout)]

    def _on_accepted(self, msg: Accepted, now: float) -> list[Effect]:
        if self.phase is not Phase.ACCEPTING:
            return []
        if msg.value != self._proposed_value:
            raise ProtocolError(
                f"acceptor {msg.acceptor_id} reports a value ballot {msg.ballot} never carried"
            )
        self._accepted_by.add(msg.acceptor_id)
        if not is_quorum(self._accepted_by, self.acceptor_ids):
            return []
        self.phase = Phase.CHOSEN
        chosen = Chosen(
            Decide(self.instance, self.ballot, msg.value),
            own_value_chosen=msg.value == self.value,
        )
        self.outcome = chosen
        return [chosen]

    def _on_reject(self, msg: Reject, now: float) -> list[Effect]:
        if msg.promised_ballot < self.ballot:
            return []  # no correct acceptor sends it
        if msg.promised_ballot == self.ballot and msg.acceptor_id in self._answered():
            # A retransmission of ours was refused after its first copy was
            # answered: it says nothing new.
            return []
        # Above our ballot, or our very ballot promised without a promise to
        # us: the log's leader in this process uses the same proposer id, so
        # its range promise can hold our ballot. Either way only a higher
        # round can win, and waiting out the phase timeout would cost a second.
        self.highest_round_seen = max(self.highest_round_seen, msg.promised_ballot.round)
        if self.phase is Phase.BACKING_OFF:
            # Already backing off from this ballot: another (or a duplicate)
            # rejection must not redraw the timer.
            return []
        self._last_failure = (
            f"ballot {self.ballot} preempted by {msg.promised_ballot} at acceptor {msg.acceptor_id}"
        )
        return self._back_off(now)

    def _back_off(self, now: float) -> list[Effect]:
        self.phase = Phase.BACKING_OFF
        cap = min(self.config.backoff_max, self.config.backoff_base * 2 ** min(self.attempts, 30))
        return [self._arm(now + self._rng.uniform(0.0, cap))]

    def _answered(self) -> set[int] | dict[int, Promise]:
        """The acceptors that answered the current phase for our ballot."""
        return self._promises if self.phase is Phase.PREPARING else self._accepted_by

    def _waiting_for(self) -> str:
        answers = self._promises if self.phase is Phase.PREPARING else self._accepted_by
        return (
            f"no quorum answered {self.phase.value} for ballot {self.ballot} "
            f"({len(answers)} of {len(self.acceptor_ids)} answered)"
        )

    def _give_up(self) -> list[Effect]:
        self.phase = Phase.GAVE_UP
        gave_up = GaveUp(self.instance, f"deadline passed: {self._last_failure}", self.ballot)
        self.outcome = gave_up
        return [gave_up]

    def _arm(self, at: float) -> SetTimer:
        self._timer_at = min(at, self.deadline)
        return SetTimer(self._timer_at)
