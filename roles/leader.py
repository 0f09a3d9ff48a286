"""The Multi-Paxos leader ("Paxos Made Simple", section 3) as a pure state machine.

One :class:`Leader` runs inside every proposer process. At most one of them
should be LEADER in a stable period, but safety never depends on it: two
leaders are simply two proposers with different ballots, and the acceptors'
promises keep them from choosing two values for one instance.

The concerns live in their own modules: the follower's election timer and
pre-vote in :mod:`roles.election`, phase 1 over a range of instances in
:mod:`roles.campaign`, phase 2 and its window in :mod:`roles.pipeline`, the
heartbeat between proposers in :mod:`roles.heartbeat`, the effects in
:mod:`roles.effects` and :mod:`roles.leader_effects`. This class ties them to
the three roles.

State table, in the manner of h11's. Every input takes ``now`` and returns a
list of effects, ending with a :class:`SetTimer` whenever the next deadline
moved; "timer" is a call of ``on_timer`` at or after that time, ``T`` is
``election_timeout``, and "a higher ballot" is a Reject whose promised ballot,
or a heartbeat reply whose highest ballot, is above our own::

    role       input                                  next       effects
    ---------  -------------------------------------  ---------  ---------------------------------
    FOLLOWER   start()                                FOLLOWER   SetTimer (election in [T, 2T))
    FOLLOWER   timer (election), pre_vote             FOLLOWER   AskLeaderContact (a new round)
    FOLLOWER   on_leader_contact: a grant, and now    CANDIDATE  SendToAcceptors(PrepareRange)
               a majority granted this round
    FOLLOWER   on_leader_contact: another proposer    FOLLOWER   none (it becomes the leader hint
               had a value accepted less than T ago              if none was known)
    FOLLOWER   campaign(), or timer (election) and    CANDIDATE  SendToAcceptors(PrepareRange)
               no pre_vote
    FOLLOWER   valid Heartbeat                        FOLLOWER   AnswerHeartbeat; the election
                                                                 timer restarts, pre-vote ends
    CANDIDATE  PromiseRange for its ballot, now a     LEADER     BecameLeader, SendHeartbeat, then
               majority                                          phase 2 as on submit (recovered
                                                                 instances first)
    CANDIDATE  a PromiseRange page, more to come      CANDIDATE  SendToAcceptors(PrepareRange,
                                                                 page_from=its next page, to=it)
    CANDIDATE  timer (phase 1), pre_vote              FOLLOWER   SteppedDown; election in [0, T)
    CANDIDATE  timer (phase 1), no pre_vote           CANDIDATE  none; backs off for [0, T)
    CANDIDATE  campaign(), or timer (end of that      CANDIDATE  SendToAcceptors(PrepareRange),
               backoff)                                          a higher round
    LEADER     submit() / submit_many()               LEADER     Assigned, SendToAcceptors(Accept)
                                                                 per instance the window admits
    LEADER     submit(), the queue full               LEADER     Rejected (hint: ourselves)
    LEADER     Accepted for its ballot, now a         LEADER     Chosen (with the tokens), then
               majority for that instance                        phase 2 as on submit
    LEADER     timer, an instance past phase_timeout  LEADER     SendToAcceptors(Accept, to=the
                                                                 acceptors yet to answer)
    LEADER     timer, an instance past phase_timeout  FOLLOWER   as on a higher ballot
               after max_retransmits resends
    LEADER     timer (heartbeat_interval)             LEADER     SendHeartbeat
    CANDIDATE  valid Heartbeat                        FOLLOWER   as on a higher ballot, then
    or LEADER                                                    AnswerHeartbeat
    CANDIDATE  a higher ballot                        FOLLOWER   SteppedDown, Rejected (queued
    or LEADER                                                    commands), OutcomeUnknown
                                                                 (assigned ones); election timer
    FOLLOWER   a higher ballot                        FOLLOWER   none (the ballot is remembered)
    LEADER     campaign(), on_learned()               LEADER     none
    not LEADER submit() / submit_many()               unchanged  Rejected (hint: the leader known)
    not LEADER on_learned()                           unchanged  none (chosen_through may advance)
    LEADER     on_compacted(T): an acceptor compacted LEADER     phase 2 stops at or below T;
               the log through T                                 OutcomeUnknown for commands there
    not LEADER on_compacted(T)                        unchanged  none (chosen_through >= T)
    any        on_snapshot_indexes()                  unchanged  none: T rises, sent with Accepts
    any        invalid Heartbeat                      unchanged  AnswerHeartbeat (our highest)
    any        on_timer before the timer              unchanged  SetTimer (the same time again)
    any        a stale, duplicate or not-yet-majority unchanged  none
               reply

A heartbeat is *valid* when its ballot is at least the highest ballot this
proposer has seen or issued (:mod:`roles.election`). A candidate does not give
way to a leader with a lower ballot: its PrepareRange may already have raised
the acceptors' promises above that leader's ballot, so that leader is finished
anyway, and the answer to its heartbeat (our highest ballot) tells it so at once.

Interface (the gRPC driver follows it): the inputs of the table, each taking
``now`` last. ``submit(token, command)`` takes a client command (the token is
the driver's handle), ``submit_many`` commands that arrived together, which
share instances; ``on_reject`` the Reject of a PrepareRange (instance =
from_instance) or of an Accept; ``on_leader_contact`` an acceptor's answer to
AskLeaderContact(seq); ``on_learned`` an instance a learner reported chosen;
``on_snapshot_indexes`` the learners' snapshot indexes (the compaction point,
:mod:`roles.compaction`); ``on_compacted`` an acceptor's refusal below its T.
Observable: ``role``, ``ballot``, ``leader_id``, ``chosen_through``, ``compact_through``,
``next_instance``, ``highest_ballot_seen``, ``in_flight``, ``queued``.

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
* On :class:`Chosen`, send its ``decide`` to the learners; its ``tokens`` are
  the commands now committed (the "Committed" effect, folded in).
* :class:`Rejected` commands were never proposed: the client may send them
  anywhere. :class:`OutcomeUnknown` ones may yet be chosen: the client must
  retry with the same request id (the state machine drops duplicates) or ask.
* On :class:`ProtocolError` from any input, drop the message: state is unchanged.
"""

from __future__ import annotations

import enum
from collections.abc import Callable, Sequence

from roles.ballot import ZERO_BALLOT, Ballot
from roles.campaign import Campaign, check_promise_range
from roles.chosen_prefix import ChosenPrefix
from roles.compaction import advance, compaction_point
from roles.effects import NEVER, Chosen, SendToAcceptors, SetTimer
from roles.election import Election
from roles.errors import ProtocolError
from roles.heartbeat import Heartbeat
from roles.leader_config import LeaderConfig
from roles.leader_effects import (
    AnswerHeartbeat,
    BecameLeader,
    LeaderEffect,
    OutcomeUnknown,
    Rejected,
    SendHeartbeat,
    SteppedDown,
)
from roles.messages import Accepted, Decide, PrepareRange, PromiseRange, Reject
from roles.pipeline import Pipeline
from roles.rng import RandomSource


class Role(enum.Enum):
    FOLLOWER = "follower"
    CANDIDATE = "candidate"
    LEADER = "leader"


class Leader:
    """The Multi-Paxos leader logic of proposer ``proposer_id`` (see the module doc)."""

    def __init__(  # noqa: PLR0913 - keyword-only; each is a separate input grouping would hide
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
        self._timer_at = NEVER
        # What every role knows.
        self._ballot = ZERO_BALLOT  # own ballot while CANDIDATE or LEADER
        self._highest_seen = ZERO_BALLOT  # from others, or our own
        self._max_round = min_round  # of every ballot seen or issued
        self._leader_id: int | None = None
        self._chosen = ChosenPrefix(chosen_through)  # notes `window` at most above a gap
        self._compact_through = 0  # the compaction point T (roles/compaction.py)
        # FOLLOWER.
        self._election = Election()
        # CANDIDATE.
        self._campaign = Campaign(chosen_through + 1)
        # LEADER.
        self._heartbeat_at = NEVER
        self._pipeline = Pipeline(self.config, noop_value)

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
        return self._chosen.through

    @property
    def compact_through(self) -> int:
        """The compaction point T this proposer sends with its Accepts."""
        return self._compact_through

    @property
    def next_instance(self) -> int:
        """The instance the next batch of new commands will get (LEADER), or the
        first instance not known to be chosen (otherwise)."""
        if self._role is not Role.LEADER:
            return self._chosen.through + 1
        return max(self._pipeline.next_slot, self._pipeline.recover_through + 1)

    @property
    def highest_ballot_seen(self) -> Ballot:
        return self._highest_seen

    @property
    def in_flight(self) -> int:
        return len(self._pipeline.in_flight)

    @property
    def queued(self) -> int:
        return len(self._pipeline.queue)

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
            return [SetTimer(self._timer_at)] if self._timer_at != NEVER else []
        effects: list[LeaderEffect] = []
        if self._role is Role.FOLLOWER:
            if now >= self._election.at:
                if self.config.pre_vote:
                    timeout = self.config.election_timeout
                    effects.append(self._election.pre_vote(now, self._rng, timeout))
                else:
                    effects += self._begin_campaign(now)
        elif self._role is Role.CANDIDATE:
            if now >= self._campaign.deadline:
                # Phase 1 timed out: back off a random time so that duelling
                # candidates drift apart, then ask the acceptors again (pre-vote)
                # or try a higher round.
                if self._campaign.campaigning and self.config.pre_vote:
                    effects += self._step_down(now, None, "phase 1 had no quorum in time")
                    self._election.at = now + self._rng.uniform(0.0, self.config.election_timeout)
                elif self._campaign.campaigning:
                    self._campaign.campaigning = False
                    backoff = self._rng.uniform(0.0, self.config.election_timeout)
                    self._campaign.deadline = now + backoff
                else:
                    effects += self._begin_campaign(now)
        else:
            effects += self._leader_timer(now)
        return effects + self._rearm()

    def campaign(self, now: float) -> list[LeaderEffect]:
        """Start an election now, whatever the election timer says. A leader
        stays leader; a candidate starts over with a higher round."""
        if self._role is Role.LEADER:
            return []
        return self._begin_campaign(now) + self._rearm()

    def submit(self, token: int, command: bytes, now: float) -> list[LeaderEffect]:
        return self.submit_many([(token, command)], now)

    def submit_many(self, commands: Sequence[tuple[int, bytes]], now: float) -> list[LeaderEffect]:
        """Several client commands, ``(token, command)``, that arrived together
        (one Append): all are queued before the pipeline is filled, so they
        share an instance instead of taking one each while the window has room."""
        tokens = [token for token, _ in commands]
        if len(set(tokens)) != len(tokens) or not self._pipeline.tokens.isdisjoint(tokens):
            raise ProtocolError(f"tokens {tokens} repeat or are already queued or in flight")
        if not commands:
            return []
        if self._role is not Role.LEADER:
            reason = f"proposer {self.proposer_id} is not leader"
            return [Rejected(tuple(tokens), self._hint(), reason)]
        if len(self._pipeline.queue) + len(commands) > self.config.max_queued:
            return [Rejected(tuple(tokens), self.proposer_id, "the leader's queue is full")]
        self._pipeline.enqueue(commands)
        return self._fill_pipeline(now) + self._rearm()

    def on_promise_range(self, msg: PromiseRange, now: float) -> list[LeaderEffect]:
        self._check_acceptor(msg.acceptor_id)
        _check_ballot(msg.ballot)
        check_promise_range(msg)
        current = (
            self._role is Role.CANDIDATE
            and msg.ballot == self._ballot
            and msg.from_instance == self._campaign.from_instance
        )
        if not current:
            return []
        complete, next_page = self._campaign.promise(msg, self.acceptor_ids)
        if next_page:
            ask = PrepareRange(msg.from_instance, self._ballot, page_from=next_page)
            return [SendToAcceptors(ask, frozenset({msg.acceptor_id}))]
        if not complete:
            return []
        # What any acceptor knows is chosen needs no phase 2 (roles/acceptor.py).
        self._chosen.advance(self._campaign.chosen_through)
        return self._become_leader(now) + self._rearm()

    def on_accepted(self, msg: Accepted, now: float) -> list[LeaderEffect]:
        self._check_acceptor(msg.acceptor_id)
        _check_ballot(msg.ballot)
        if self._role is not Role.LEADER or msg.ballot != self._ballot:
            return []
        entry = self._pipeline.on_accepted(msg, self.acceptor_ids)
        if entry is None:
            return []
        self._chosen.note(msg.instance)
        chosen = Chosen(
            Decide(msg.instance, self._ballot, entry.value),
            own_value_chosen=bool(entry.tokens),
            tokens=entry.tokens,
        )
        return [chosen, *self._fill_pipeline(now), *self._rearm()]

    def on_snapshot_indexes(self, indexes: Sequence[int], learners: int) -> None:
        """The learners' snapshot indexes (one per learner that reported, of
        ``learners``): raise T as :func:`roles.compaction.compaction_point`
        allows. Sent with the next Accepts; nothing to do now."""
        point = compaction_point(indexes, learners, self._chosen.through)
        self._compact_through = advance(self._compact_through, point)

    def on_compacted(self, acceptor_id: int, through: int, now: float) -> list[LeaderEffect]:
        """An acceptor refused a vote because it compacted the log through
        ``through``: every instance there is chosen, and its value lives in
        the learners' snapshots. Stop proposing there and move on."""
        self._check_acceptor(acceptor_id)
        if through < 0:
            raise ProtocolError(f"compaction point {through} < 0")
        self._chosen.advance(through)
        self._compact_through = advance(self._compact_through, through)
        if self._role is not Role.LEADER:
            return []
        effects: list[LeaderEffect] = []
        unknown = self._pipeline.forget_through(through)
        if unknown:
            effects.append(OutcomeUnknown(unknown, f"instances <= {through} were compacted"))
        return effects + self._fill_pipeline(now) + self._rearm()

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
            self._chosen.advance(msg.chosen_through)
            if self._role is Role.FOLLOWER:
                self._leader_id = msg.proposer_id
                self._election.prevoting = False
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
        if self._role is not Role.FOLLOWER or not self._election.is_current(seq):
            return []
        other = leader_id is not None and leader_id != self.proposer_id
        if other and seconds_since < self.config.election_timeout:
            if self._leader_id is None:
                self._leader_id = leader_id  # a hint for redirects
            return []
        if not self._election.grant(acceptor_id, self.acceptor_ids):
            return []
        return self._begin_campaign(now) + self._rearm()

    def on_learned(self, instance: int, now: float) -> list[LeaderEffect]:
        """``instance`` is chosen, as the driver heard from a learner. A leader
        ignores this: its own quorums decide its instances. Others remember at
        most ``window`` instances beyond a gap."""
        if instance < 1:
            raise ProtocolError(f"instance must be >= 1, got {instance}")
        if self._role is not Role.LEADER and instance <= self._chosen.through + self.config.window:
            self._chosen.note(instance)
        return []

    # Transitions --------------------------------------------------------------

    def _begin_campaign(self, now: float) -> list[LeaderEffect]:
        self._election.prevoting = False
        self._election.at = NEVER
        self._role = Role.CANDIDATE
        self._max_round = max(self._max_round, self._highest_seen.round) + 1
        self._ballot = self._highest_seen = Ballot(self._max_round, self.proposer_id)
        self._leader_id = None
        self._campaign.begin(self._chosen.through + 1, now + self.config.phase_timeout)
        return [SendToAcceptors(PrepareRange(self._campaign.from_instance, self._ballot))]

    def _become_leader(self, now: float) -> list[LeaderEffect]:
        self._role = Role.LEADER
        self._leader_id = self.proposer_id
        self._pipeline.restart(*self._campaign.won(self._chosen.through))
        self._heartbeat_at = now + self.config.heartbeat_interval
        return [
            BecameLeader(self._ballot, self._campaign.from_instance),
            self._heartbeat(),
            *self._fill_pipeline(now),
        ]

    def _fill_pipeline(self, now: float) -> list[LeaderEffect]:
        return self._pipeline.fill(
            now, self._ballot, self._chosen.through, self._encode_batch, self._compact_through
        )

    def _leader_timer(self, now: float) -> list[LeaderEffect]:
        stuck = self._pipeline.stuck(now)
        if stuck is not None:
            reason = (
                f"instance {stuck} has no quorum for {self._ballot} "
                f"after {self.config.max_retransmits} retransmissions"
            )
            return self._step_down(now, None, reason)
        effects = self._pipeline.retransmit(
            now, self._ballot, self.acceptor_ids, self._chosen.through, self._compact_through
        )
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
        queued, assigned = self._pipeline.drain()
        effects: list[LeaderEffect] = [SteppedDown(hint, reason)]
        if queued:
            effects.append(Rejected(queued, hint, f"stepped down: {reason}"))
        if assigned:
            effects.append(OutcomeUnknown(assigned, f"stepped down: {reason}"))
        self._role = Role.FOLLOWER
        self._ballot = ZERO_BALLOT
        self._leader_id = hint
        self._campaign.end()
        self._heartbeat_at = NEVER
        self._arm_election(now)
        return effects

    # Helpers ------------------------------------------------------------------

    def _heartbeat(self) -> SendHeartbeat:
        return SendHeartbeat(Heartbeat(self._ballot, self.proposer_id, self._chosen.through))

    def _arm_election(self, now: float) -> None:
        self._election.arm(now, self._rng, self.config.election_timeout)

    def _deadline(self) -> float:
        if self._role is Role.FOLLOWER:
            return self._election.at
        if self._role is Role.CANDIDATE:
            return self._campaign.deadline
        return min(self._heartbeat_at, self._pipeline.next_deadline())

    def _rearm(self) -> list[LeaderEffect]:
        at = self._deadline()
        if at in (self._timer_at, NEVER):
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
