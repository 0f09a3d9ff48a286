"""The Multi-Paxos leader ("Paxos Made Simple", section 3) as a pure state machine.

One :class:`Leader` runs inside every proposer process. At most one of them
should be LEADER in a stable period, but safety never depends on it: two
leaders are simply two proposers with different ballots, and the acceptors'
promises keep them from choosing two values for one instance.

Roles and transitions (every input takes ``now`` and returns a list of effects)::

    FOLLOWER  --election timeout: pre-vote; a majority grants------> CANDIDATE
    FOLLOWER  --campaign() (operator, tests)-----------------------> CANDIDATE
    CANDIDATE --majority of PromiseRange for its ballot------------> LEADER
    CANDIDATE --phase timeout----------------------------------> FOLLOWER (backs
                off a random time in [0, election_timeout), then pre-votes again;
                without pre-vote: CANDIDATE with a higher round after the backoff)
    CANDIDATE --valid Heartbeat, or any higher ballot--------------> FOLLOWER
    LEADER    --valid Heartbeat, or any higher ballot--------------> FOLLOWER
    LEADER    --an instance without quorum after max_retransmits---> FOLLOWER
    FOLLOWER  --valid Heartbeat----------------------------> FOLLOWER (timer re-armed)

"Any higher ballot" is a Reject whose promised ballot, or a heartbeat reply
whose highest ballot, is above our own. A heartbeat is *valid* when its ballot
is at least the highest ballot this proposer has seen or issued; a follower
campaigns when no valid heartbeat came for a random time in ``[T, 2T)``
(``T = election_timeout``). A candidate does not give way to a leader with a
lower ballot: its PrepareRange may already have raised the acceptors'
promises above that leader's ballot, so that leader is finished anyway, and
the answer to its heartbeat (our highest ballot) tells it so at once.

Pre-vote (Raft's PreVote, adapted to Paxos): when its election timer fires, a
follower does not raise its round at once. It first asks every acceptor which
proposer last had a value accepted there and how long ago
(:class:`AskLeaderContact`); an acceptor *grants* unless another proposer did
so less than ``election_timeout`` ago. Only with a majority of grants does it
campaign. A proposer that is cut off (or can send but not receive) therefore
never gets to raise its round, and cannot depose a working leader when the
network heals; a leader that stops getting values accepted is replaced as
before, one round trip later. Safety does not depend on it: it only delays
campaigns. An idle leader has nothing accepted, so at idle a follower that
misses its heartbeats may still take over, which costs nothing in flight.

Phase 1 (section 3): a candidate sends one ``PrepareRange(chosen_through + 1,
ballot)`` for every instance at once. With a majority of PromiseRange it
re-proposes, for every instance from there to the highest one reported, the
value of the highest accepted ballot among the promises, and a no-op where no
promise reported any (a hole). New commands get instances above that.

Phase 2: the leader batches queued commands (up to ``max_batch``) into one
instance value with ``encode_batch``. It keeps at most ``window`` instances
between ``chosen_through`` and the next free instance, so at most ``window``
are in phase 2 and a stuck instance at the head stalls the pipeline instead of
growing memory. Batching is natural: a command goes out at once while the
window has room, and commands that arrive while it is full share the next
instance. Each instance counts Accepted for the leader's own ballot; a majority
makes it chosen. An instance without a quorum after ``phase_timeout`` is sent
again to the acceptors that have not answered; after ``max_retransmits`` such
resends the leader assumes it cannot reach a majority and steps down, so that
a proposer that can takes over.

Interface (the gRPC driver follows it)::

    Leader(*, proposer_id, acceptor_ids, peer_ids, rng, config, encode_batch,
           noop_value, chosen_through=0, min_round=0)
    start(now)                           arm the election timer (once)
    on_timer(now)                        single timer: SetTimer(at) replaces the
                                         previous one; calls before `at` do nothing
    campaign(now)                        start an election now (operator, tests)
    submit(token, command, now)          a client command; token is the driver's handle
    submit_many([(token, command)], now) commands that arrived together: they share instances
    on_promise_range(msg, now)
    on_accepted(msg, now)
    on_reject(msg, now)                  for PrepareRange (instance = from_instance) or Accept
    on_heartbeat(msg, now)               from another proposer; always answers
    on_heartbeat_reply(from_id, highest_ballot, now)
    on_leader_contact(acceptor_id, seq, leader_id, seconds_since, now)
                                         an acceptor's answer to AskLeaderContact(seq)
    on_learned(instance, now)            chosen, as the driver heard from a learner
    role, ballot, leader_id, chosen_through, next_instance,
    highest_ballot_seen, in_flight, queued

Effects: :class:`SendToAcceptors`, :class:`AskLeaderContact`, :class:`SendHeartbeat`,
:class:`AnswerHeartbeat`, :class:`~roles.proposer.SetTimer`,
:class:`InstanceChosen`, :class:`Assigned`, :class:`Rejected`,
:class:`OutcomeUnknown`, :class:`BecameLeader`, :class:`SteppedDown`.

What the driver must do:

* Call the inputs one at a time; the object is not thread-safe.
* Answer every heartbeat with the :class:`AnswerHeartbeat` that
  :meth:`Leader.on_heartbeat` returns, and feed the answer to the sender's
  :meth:`Leader.on_heartbeat_reply`.
* Deliver acceptors' replies only to the incarnation of the process that sent
  the request (a unary gRPC call does this). A restarted proposer starts again
  from round 0 and may reuse a ballot of its previous life. That is safe
  because an acceptor never promises one ballot twice, so a reused ballot
  cannot win phase 1 a second time; but a promise made to the old incarnation
  and handed to the new one would let it, and the new incarnation could then
  send a second value under one ballot. A driver that cannot rule this out
  must persist the highest round it used and pass it back as ``min_round``.
* On :class:`InstanceChosen`, send its ``decide`` to the learners; its
  ``tokens`` are the commands now committed (the "Committed" effect, folded in).
* :class:`Rejected` commands were never proposed: the client may send them
  anywhere. :class:`OutcomeUnknown` ones may yet be chosen: the client must
  retry with the same request id (the state machine drops duplicates) or ask.
* On :class:`ProtocolError` from any input, drop the message: state is unchanged.
"""

from __future__ import annotations

import enum
from collections import deque
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass

from roles.ballot import ZERO_BALLOT, Ballot
from roles.errors import ProtocolError
from roles.messages import Accept, Accepted, Decide, PrepareRange, PromiseRange, Reject
from roles.proposer import RandomSource, SetTimer
from roles.quorum import is_quorum

_NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class LeaderConfig:
    #: The leader sends a heartbeat to every peer this often (seconds).
    heartbeat_interval: float = 0.05
    #: A follower campaigns after a random time in [T, 2T) without a valid heartbeat.
    election_timeout: float = 0.3
    #: Phase 1, or one instance's phase 2, without a quorum: re-campaign or resend.
    phase_timeout: float = 0.5
    #: At most this many instances between chosen_through and the next free one.
    window: int = 4
    #: At most this many commands in one instance's value.
    max_batch: int = 512
    #: At most this many command bytes in one instance's value (one command
    #: larger than this still goes alone: the driver bounds single commands).
    max_batch_bytes: int = 512 * 1024
    #: Resends of one instance's Accept before the leader gives up its leadership.
    max_retransmits: int = 3
    #: Commands queued at the leader beyond this are rejected (back-pressure).
    max_queued: int = 100_000
    #: Ask the acceptors before campaigning (see "Pre-vote" in the module doc).
    pre_vote: bool = True

    def __post_init__(self) -> None:
        timings = (self.heartbeat_interval, self.election_timeout, self.phase_timeout)
        if min(timings) <= 0 or self.heartbeat_interval >= self.election_timeout:
            raise ValueError(f"invalid leader timing: {self!r}")
        limits = (self.window, self.max_batch, self.max_queued, self.max_batch_bytes)
        if min(limits) < 1 or self.max_retransmits < 0:
            raise ValueError(f"invalid leader limits: {self!r}")


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


# Messages between proposers ---------------------------------------------------


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader of ``ballot`` is alive; every instance <= ``chosen_through`` is chosen."""

    ballot: Ballot
    proposer_id: int
    chosen_through: int


# Effects: what the driver must do after a step ---------------------------------


@dataclass(frozen=True, slots=True)
class SendToAcceptors:
    """Send ``message`` to the acceptors in ``to`` (every acceptor when None)."""

    message: PrepareRange | Accept
    to: frozenset[int] | None = None


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
class InstanceChosen:
    """``value`` is chosen for ``instance``: send :attr:`decide` to the learners.
    The commands with ``tokens`` are in it (empty for re-proposed values and no-ops)."""

    instance: int
    ballot: Ballot
    value: bytes
    tokens: tuple[int, ...] = ()

    @property
    def decide(self) -> Decide:
        return Decide(self.instance, self.ballot, self.value)


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
    SendToAcceptors
    | AskLeaderContact
    | SendHeartbeat
    | AnswerHeartbeat
    | SetTimer
    | InstanceChosen
    | Assigned
    | Rejected
    | OutcomeUnknown
    | BecameLeader
    | SteppedDown
)


@dataclass(slots=True)
class _InFlight:
    """One instance in phase 2 under the leader's ballot."""

    value: bytes
    tokens: tuple[int, ...]
    accepted_by: set[int]
    deadline: float
    retransmits: int = 0


class Leader:
    """The Multi-Paxos leader logic of proposer ``proposer_id`` (see the module doc)."""

    def __init__(
        self,
        *,
        proposer_id: int,
        acceptor_ids: frozenset[int],
        peer_ids: frozenset[int],
        rng: RandomSource,
        config: LeaderConfig | None = None,
        encode_batch: Callable[[Sequence[bytes]], bytes],
        noop_value: bytes,
        chosen_through: int = 0,
        min_round: int = 0,
    ) -> None:
        if not acceptor_ids:
            raise ValueError("a leader needs at least one acceptor")
        if proposer_id in peer_ids:
            raise ValueError("peer_ids are the *other* proposers")
        if chosen_through < 0 or min_round < 0:
            raise ValueError("chosen_through and min_round must be >= 0")
        self.proposer_id = proposer_id
        self.acceptor_ids = acceptor_ids
        self.peer_ids = peer_ids
        self.config = config or LeaderConfig()
        self.noop_value = noop_value
        self._rng = rng
        self._encode_batch = encode_batch
        self._role = Role.FOLLOWER
        self._started = False
        self._timer_at = _NEVER
        # What every role knows.
        self._ballot = ZERO_BALLOT  # own ballot while CANDIDATE or LEADER
        self._highest_seen = ZERO_BALLOT  # from others, or our own
        self._max_round = min_round  # of every ballot seen or issued
        self._leader_id: int | None = None
        self._chosen_through = chosen_through
        self._chosen_above: set[int] = set()  # chosen, above a gap; at most `window`
        # FOLLOWER.
        self._election_at = _NEVER
        self._prevote_seq = 0  # the pre-vote round in progress, if _prevoting
        self._prevoting = False
        self._prevote_grants: set[int] = set()
        # CANDIDATE.
        self._from_instance = chosen_through + 1
        self._promises: dict[int, PromiseRange] = {}
        self._campaigning = False  # False: backing off before the next round
        self._candidate_at = _NEVER
        # LEADER.
        self._heartbeat_at = _NEVER
        self._queue: deque[tuple[int, bytes]] = deque()
        self._tokens: set[int] = set()  # queued or in flight
        self._in_flight: dict[int, _InFlight] = {}
        self._recovered: dict[int, bytes] = {}  # adopted values not yet re-proposed
        self._recover_through = 0  # highest instance the promises reported
        self._next_slot = 1  # next instance to start phase 2 for

    # Observable state -------------------------------------------------------

    @property
    def role(self) -> Role:
        return self._role

    @property
    def ballot(self) -> Ballot:
        """Our ballot while CANDIDATE or LEADER; ZERO_BALLOT as a follower."""
        return self._ballot

    @property
    def leader_id(self) -> int | None:
        """Who leads, as far as we know (ourselves when LEADER)."""
        return self._leader_id

    @property
    def chosen_through(self) -> int:
        """The highest n such that every instance <= n is known to be chosen."""
        return self._chosen_through

    @property
    def next_instance(self) -> int:
        """The instance the next batch of new commands will get (LEADER), or the
        first instance not known to be chosen (otherwise)."""
        if self._role is not Role.LEADER:
            return self._chosen_through + 1
        return max(self._next_slot, self._recover_through + 1)

    @property
    def highest_ballot_seen(self) -> Ballot:
        return self._highest_seen

    @property
    def in_flight(self) -> int:
        return len(self._in_flight)

    @property
    def queued(self) -> int:
        return len(self._queue)

    # Inputs -------------------------------------------------------------------

    def start(self, now: float) -> list[LeaderEffect]:
        """Begin as a follower: campaign unless a valid heartbeat comes first."""
        if self._started:
            raise ProtocolError("start() may be called once")
        self._started = True
        if self._role is Role.FOLLOWER:
            self._arm_election(now)
        return self._rearm()

    def on_timer(self, now: float) -> list[LeaderEffect]:
        if now < self._timer_at:
            # Early (an event loop may fire a timer up to its clock resolution
            # before the time asked, and float rounding does the rest): the
            # caller has used its timer up, so ask for the same one again.
            # Returning nothing here left a leader with no timer, for good.
            return [SetTimer(self._timer_at)] if self._timer_at != _NEVER else []
        effects: list[LeaderEffect] = []
        if self._role is Role.FOLLOWER:
            if now >= self._election_at:
                effects += self._pre_vote(now) if self.config.pre_vote else self._campaign(now)
        elif self._role is Role.CANDIDATE:
            if now >= self._candidate_at:
                if self._campaigning and self.config.pre_vote:
                    # Phase 1 timed out: back off a random time so that duelling
                    # candidates drift apart, then ask the acceptors again.
                    effects += self._step_down(now, None, "phase 1 had no quorum in time")
                    self._election_at = now + self._rng.uniform(0.0, self.config.election_timeout)
                elif self._campaigning:
                    # Phase 1 timed out: wait a random time so that duelling
                    # candidates drift apart, then try a higher round.
                    self._campaigning = False
                    self._candidate_at = now + self._rng.uniform(0.0, self.config.election_timeout)
                else:
                    effects += self._campaign(now)
        else:
            effects += self._leader_timer(now)
        return effects + self._rearm()

    def campaign(self, now: float) -> list[LeaderEffect]:
        """Start an election now, whatever the election timer says. A leader
        stays leader; a candidate starts over with a higher round."""
        if self._role is Role.LEADER:
            return []
        return self._campaign(now) + self._rearm()

    def submit(self, token: int, command: bytes, now: float) -> list[LeaderEffect]:
        return self.submit_many([(token, command)], now)

    def submit_many(self, commands: Sequence[tuple[int, bytes]], now: float) -> list[LeaderEffect]:
        """Several client commands, ``(token, command)``, that arrived together
        (one Append): all are queued before the pipeline is filled, so they
        share an instance instead of taking one each while the window has room."""
        tokens = [token for token, _ in commands]
        if len(set(tokens)) != len(tokens) or not self._tokens.isdisjoint(tokens):
            raise ProtocolError(f"tokens {tokens} repeat or are already queued or in flight")
        if not commands:
            return []
        if self._role is not Role.LEADER:
            reason = f"proposer {self.proposer_id} is not leader"
            return [Rejected(tuple(tokens), self._hint(), reason)]
        if len(self._queue) + len(commands) > self.config.max_queued:
            return [Rejected(tuple(tokens), self.proposer_id, "the leader's queue is full")]
        self._queue.extend(commands)
        self._tokens.update(tokens)
        return self._fill_pipeline(now) + self._rearm()

    def on_promise_range(self, msg: PromiseRange, now: float) -> list[LeaderEffect]:
        self._check_acceptor(msg.acceptor_id)
        _check_ballot(msg.ballot)
        if msg.from_instance < 1:
            raise ProtocolError(f"PromiseRange from instance {msg.from_instance}")
        for entry in msg.accepted:
            if entry.acceptor_id != msg.acceptor_id or entry.instance < msg.from_instance:
                raise ProtocolError(f"PromiseRange from {msg.acceptor_id} reports {entry}")
            if entry.ballot.is_zero or entry.ballot >= msg.ballot:
                raise ProtocolError(f"PromiseRange for {msg.ballot} reports {entry}")
        current = (
            self._role is Role.CANDIDATE
            and msg.ballot == self._ballot
            and msg.from_instance == self._from_instance
        )
        if not current or msg.acceptor_id in self._promises:
            return []
        self._promises[msg.acceptor_id] = msg
        if not is_quorum(self._promises, self.acceptor_ids):
            return []
        return self._become_leader(now) + self._rearm()

    def on_accepted(self, msg: Accepted, now: float) -> list[LeaderEffect]:
        self._check_acceptor(msg.acceptor_id)
        _check_ballot(msg.ballot)
        if self._role is not Role.LEADER or msg.ballot != self._ballot:
            return []
        entry = self._in_flight.get(msg.instance)
        if entry is None:
            return []  # already chosen, or never ours
        if msg.value != entry.value:
            raise ProtocolError(
                f"acceptor {msg.acceptor_id} reports a value ballot {msg.ballot} never "
                f"carried for instance {msg.instance}"
            )
        if msg.acceptor_id in entry.accepted_by:
            return []
        entry.accepted_by.add(msg.acceptor_id)
        if not is_quorum(entry.accepted_by, self.acceptor_ids):
            return []
        del self._in_flight[msg.instance]
        self._tokens.difference_update(entry.tokens)
        self._note_chosen(msg.instance)
        chosen = InstanceChosen(msg.instance, self._ballot, entry.value, entry.tokens)
        return [chosen, *self._fill_pipeline(now), *self._rearm()]

    def on_reject(self, msg: Reject, now: float) -> list[LeaderEffect]:
        self._check_acceptor(msg.acceptor_id)
        _check_ballot(msg.ballot)
        if msg.promised_ballot < msg.ballot:
            raise ProtocolError(f"Reject of {msg.ballot} for the lower {msg.promised_ballot}")
        return self._on_higher_ballot(
            msg.promised_ballot,
            now,
            f"acceptor {msg.acceptor_id} promised {msg.promised_ballot}",
        )

    def on_heartbeat(self, msg: Heartbeat, now: float) -> list[LeaderEffect]:
        self._check_peer(msg.proposer_id)
        _check_ballot(msg.ballot)
        if msg.ballot.proposer_id != msg.proposer_id or msg.chosen_through < 0:
            raise ProtocolError(f"malformed heartbeat {msg}")
        effects: list[LeaderEffect] = []
        if msg.ballot >= self._highest_seen:
            self._highest_seen = msg.ballot
            self._max_round = max(self._max_round, msg.ballot.round)
            self._advance_chosen_through(msg.chosen_through)
            if self._role is Role.FOLLOWER:
                self._leader_id = msg.proposer_id
                self._prevoting = False
                self._arm_election(now)
            else:
                effects += self._step_down(
                    now, msg.proposer_id, f"proposer {msg.proposer_id} leads with {msg.ballot}"
                )
            effects += self._rearm()
        # A stale leader learns from the answer that it has been replaced.
        return [*effects, AnswerHeartbeat(msg.proposer_id, self._highest_seen)]

    def on_heartbeat_reply(
        self, from_id: int, highest_ballot: Ballot, now: float
    ) -> list[LeaderEffect]:
        self._check_peer(from_id)
        return self._on_higher_ballot(
            highest_ballot, now, f"proposer {from_id} has seen {highest_ballot}"
        )

    def on_leader_contact(
        self,
        acceptor_id: int,
        seq: int,
        leader_id: int | None,
        seconds_since: float,
        now: float,
    ) -> list[LeaderEffect]:
        """Acceptor ``acceptor_id``'s answer to :class:`AskLeaderContact` ``seq``:
        proposer ``leader_id`` last had a value accepted there ``seconds_since``
        ago (``leader_id`` None: none since it started)."""
        self._check_acceptor(acceptor_id)
        if not seconds_since >= 0 or (leader_id is not None and leader_id < 0):
            raise ProtocolError(f"bad leader contact {leader_id}, {seconds_since}")
        if self._role is not Role.FOLLOWER or not self._prevoting or seq != self._prevote_seq:
            return []
        other = leader_id is not None and leader_id != self.proposer_id
        if other and seconds_since < self.config.election_timeout:
            if self._leader_id is None:
                self._leader_id = leader_id  # a hint for redirects
            return []
        self._prevote_grants.add(acceptor_id)
        if not is_quorum(self._prevote_grants, self.acceptor_ids):
            return []
        return self._campaign(now) + self._rearm()

    def on_learned(self, instance: int, now: float) -> list[LeaderEffect]:
        """``instance`` is chosen, as the driver heard from a learner. A leader
        ignores this: its own quorums decide its instances. Others remember at
        most ``window`` instances beyond a gap."""
        if instance < 1:
            raise ProtocolError(f"instance must be >= 1, got {instance}")
        if self._role is not Role.LEADER and instance <= self._chosen_through + self.config.window:
            self._note_chosen(instance)
        return []

    # Transitions --------------------------------------------------------------

    def _pre_vote(self, now: float) -> list[LeaderEffect]:
        """Ask the acceptors whether a leader is at work; if no majority grants
        before the election timer fires again, ask again then."""
        self._prevote_seq += 1
        self._prevoting = True
        self._prevote_grants = set()
        self._arm_election(now)
        return [AskLeaderContact(self._prevote_seq)]

    def _campaign(self, now: float) -> list[LeaderEffect]:
        self._prevoting = False
        self._role = Role.CANDIDATE
        self._max_round = max(self._max_round, self._highest_seen.round) + 1
        self._ballot = self._highest_seen = Ballot(self._max_round, self.proposer_id)
        self._leader_id = None
        self._from_instance = self._chosen_through + 1
        self._promises = {}
        self._campaigning = True
        self._candidate_at = now + self.config.phase_timeout
        self._election_at = _NEVER
        return [SendToAcceptors(PrepareRange(self._from_instance, self._ballot))]

    def _adopt(self, promises: Iterable[PromiseRange]) -> dict[int, bytes]:
        """Per instance, the value of the highest accepted ballot among the
        promises (P2c, section 2.2, for every instance at once: section 3)."""
        best: dict[int, Accepted] = {}
        for promise in promises:
            for entry in promise.accepted:
                known = best.get(entry.instance)
                if known is None or entry.ballot > known.ballot:
                    best[entry.instance] = entry
        return {instance: entry.value for instance, entry in best.items()}

    def _become_leader(self, now: float) -> list[LeaderEffect]:
        promises = [self._promises[aid] for aid in sorted(self._promises)]
        reported = [entry.instance for promise in promises for entry in promise.accepted]
        self._role = Role.LEADER
        self._leader_id = self.proposer_id
        self._promises = {}
        self._candidate_at = _NEVER
        adopted = self._adopt(promises)
        self._recovered = {i: v for i, v in adopted.items() if i > self._chosen_through}
        self._recover_through = max(reported, default=self._from_instance - 1)
        self._next_slot = max(self._from_instance, self._chosen_through + 1)
        self._heartbeat_at = now + self.config.heartbeat_interval
        return [
            BecameLeader(self._ballot, self._from_instance),
            self._heartbeat(),
            *self._fill_pipeline(now),
        ]

    def _fill_pipeline(self, now: float) -> list[LeaderEffect]:
        """Start phase 2 for as many instances as the window allows: first the
        recovered ones (adopted values, no-ops in the holes), then new commands."""
        effects: list[LeaderEffect] = []
        while self._next_slot - self._chosen_through <= self.config.window:
            instance = self._next_slot
            tokens: tuple[int, ...] = ()
            if instance <= self._recover_through:
                value = self._recovered.pop(instance, self.noop_value)
            elif self._queue:
                batch = [self._queue.popleft()]
                size = len(batch[0][1])
                while (
                    self._queue
                    and len(batch) < self.config.max_batch
                    and size + len(self._queue[0][1]) <= self.config.max_batch_bytes
                ):
                    size += len(self._queue[0][1])
                    batch.append(self._queue.popleft())
                tokens = tuple(token for token, _ in batch)
                value = self._encode_batch([command for _, command in batch])
                effects.append(Assigned(instance, tokens))
            else:
                break
            self._next_slot += 1
            deadline = now + self.config.phase_timeout
            self._in_flight[instance] = _InFlight(value, tokens, set(), deadline)
            effects.append(SendToAcceptors(Accept(instance, self._ballot, value)))
        return effects

    def _leader_timer(self, now: float) -> list[LeaderEffect]:
        effects: list[LeaderEffect] = []
        due = sorted(i for i, e in self._in_flight.items() if e.deadline <= now)
        for instance in due:
            if self._in_flight[instance].retransmits >= self.config.max_retransmits:
                reason = (
                    f"instance {instance} has no quorum for {self._ballot} "
                    f"after {self.config.max_retransmits} retransmissions"
                )
                return self._step_down(now, None, reason)
        for instance in due:
            entry = self._in_flight[instance]
            entry.retransmits += 1
            entry.deadline = now + self.config.phase_timeout
            missing = self.acceptor_ids - entry.accepted_by
            effects.append(SendToAcceptors(Accept(instance, self._ballot, entry.value), missing))
        if now >= self._heartbeat_at:
            self._heartbeat_at = now + self.config.heartbeat_interval
            effects.append(self._heartbeat())
        return effects

    def _on_higher_ballot(self, ballot: Ballot, now: float, reason: str) -> list[LeaderEffect]:
        """Remember ``ballot``; if it is above our own, stop campaigning or
        leading (the acceptors would refuse our messages anyway). A ballot
        not above ours is a duplicate or an answer to our own: nothing new."""
        if ballot > self._highest_seen:
            self._highest_seen = ballot
            self._max_round = max(self._max_round, ballot.round)
        if self._role is Role.FOLLOWER or ballot <= self._ballot:
            return []
        hint = ballot.proposer_id if ballot.proposer_id != self.proposer_id else None
        return self._step_down(now, hint, reason) + self._rearm()

    def _step_down(self, now: float, hint: int | None, reason: str) -> list[LeaderEffect]:
        effects: list[LeaderEffect] = [SteppedDown(hint, reason)]
        if self._queue:
            queued = tuple(token for token, _ in self._queue)
            effects.append(Rejected(queued, hint, f"stepped down: {reason}"))
        assigned = tuple(t for i in sorted(self._in_flight) for t in self._in_flight[i].tokens)
        if assigned:
            effects.append(OutcomeUnknown(assigned, f"stepped down: {reason}"))
        self._role = Role.FOLLOWER
        self._ballot = ZERO_BALLOT
        self._leader_id = hint
        self._promises = {}
        self._campaigning = False
        self._candidate_at = _NEVER
        self._heartbeat_at = _NEVER
        self._queue.clear()
        self._tokens.clear()
        self._in_flight.clear()
        self._recovered = {}
        self._recover_through = 0
        self._arm_election(now)
        return effects

    # Helpers ------------------------------------------------------------------

    def _heartbeat(self) -> SendHeartbeat:
        return SendHeartbeat(Heartbeat(self._ballot, self.proposer_id, self._chosen_through))

    def _arm_election(self, now: float) -> None:
        timeout = self.config.election_timeout
        self._election_at = now + self._rng.uniform(timeout, 2 * timeout)

    def _note_chosen(self, instance: int) -> None:
        if instance > self._chosen_through:
            self._chosen_above.add(instance)
            self._advance_chosen_through(self._chosen_through)

    def _advance_chosen_through(self, chosen_through: int) -> None:
        """Every instance <= ``chosen_through`` is chosen; keep going through
        the instances known chosen above it, so that the prefix stays contiguous."""
        if chosen_through > self._chosen_through:
            self._chosen_through = chosen_through
            self._chosen_above = {i for i in self._chosen_above if i > chosen_through}
        while self._chosen_through + 1 in self._chosen_above:
            self._chosen_through += 1
            self._chosen_above.discard(self._chosen_through)

    def _deadline(self) -> float:
        if self._role is Role.FOLLOWER:
            return self._election_at
        if self._role is Role.CANDIDATE:
            return self._candidate_at
        deadlines = (entry.deadline for entry in self._in_flight.values())
        return min(self._heartbeat_at, *deadlines) if self._in_flight else self._heartbeat_at

    def _rearm(self) -> list[LeaderEffect]:
        at = self._deadline()
        if at == self._timer_at or at == _NEVER:
            return []
        self._timer_at = at
        return [SetTimer(at)]

    def _hint(self) -> int | None:
        return self._leader_id if self._leader_id != self.proposer_id else None

    def _check_acceptor(self, acceptor_id: int) -> None:
        if acceptor_id not in self.acceptor_ids:
            raise ProtocolError(f"reply from unknown acceptor {acceptor_id}")

    def _check_peer(self, proposer_id: int) -> None:
        if proposer_id not in self.peer_ids:
            raise ProtocolError(f"message from unknown proposer {proposer_id}")


def _check_ballot(ballot: Ballot) -> None:
    if ballot.is_zero:
        raise ProtocolError("the zero ballot is never valid")
