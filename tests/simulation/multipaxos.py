"""A seeded, in-memory Multi-Paxos cluster: the test harness for :class:`roles.Leader`.

Like :mod:`tests.simulation.network`, a run is a pure function of its seed and
its :class:`MultiConfig`: one ``random.Random(seed)`` draws every delay, loss,
fault and tie-break, so replaying a seed replays the exact schedule.

The cluster:

* **Proposers** each run a :class:`roles.Leader` behind a small driver that
  maps client commands to tokens and effects to messages. A crash loses the
  whole process (its Leader, its tokens, its timer); the restart is a fresh
  Leader with ``chosen_through=0`` and ``min_round=0``. Replies addressed to the
  dead incarnation are dropped, as a unary RPC's response dies with its
  caller; requests it already sent are still delivered.
* **Acceptors** are :class:`roles.Acceptor` with a per-instance
  :class:`~roles.AcceptorState` map and a :class:`~roles.RangePromise`. Only a
  state the acceptor asked to persist reaches the "disk", before the reply is
  sent; a crash-restart keeps the disk and forgets everything else.
* **Learners** are :class:`roles.Learner` fed every Accepted and every Decide.
  Each applies decided instances strictly in order to a replicated state: a log
  of command ids with exactly-once deduplication (a command id already applied
  is skipped, as the KV store will skip a retried request). Learner 1 tells
  every proposer what it applied (``on_learned``). The channels *to* learners
  are reliable (delayed, reordered and duplicated, never lost or cut), because
  learner catch-up is not what this harness tests.
* **Clients** submit commands to whichever proposer they think leads. Rejected
  -> retry at the hinted leader; OutcomeUnknown or a timeout -> retry the same
  command id (so a command may be chosen twice; the state machine applies it once).

Before ``heal_at`` the network drops, duplicates and reorders messages, nodes
are partitioned (including the current leader alone), the leader crashes,
acceptors crash and restart, and two proposers are made to campaign at the same
instant (duelling leaders). After ``heal_at`` the network is reliable and the
run goes on until the cluster has converged (one leader, followed by all, every
command applied everywhere) or ``converge_within`` virtual seconds have passed.

The harness never asserts: :func:`check_safety` and :func:`check_convergence`
return what they found, so that a broken variant can be shown to fail.
"""

from __future__ import annotations

import heapq
import random
from collections import Counter, defaultdict, deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

from roles import (
    ZERO_BALLOT,
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    AcceptorStep,
    AnswerHeartbeat,
    AskLeaderContact,
    Assigned,
    Ballot,
    BecameLeader,
    Decide,
    Heartbeat,
    InstanceChosen,
    Leader,
    LeaderConfig,
    LeaderEffect,
    Learner,
    OutcomeUnknown,
    PrepareRange,
    PromiseRange,
    ProtocolError,
    RangePromise,
    RangeStep,
    Reject,
    Rejected,
    Role,
    SafetyViolation,
    SendHeartbeat,
    SendToAcceptors,
    SetTimer,
    SteppedDown,
)
from tests.simulation.network import Violation, chosen_from_votes

NOOP = b"noop"
BATCH_PREFIX = b"batch:"


def encode_batch(commands: Sequence[bytes]) -> bytes:
    return BATCH_PREFIX + b",".join(commands)


def decode_value(value: bytes) -> list[str] | None:
    """The command ids in an instance's value; None if it is not a valid value."""
    if value == NOOP:
        return []
    if not value.startswith(BATCH_PREFIX) or value == BATCH_PREFIX:
        return None
    return value[len(BATCH_PREFIX) :].decode().split(",")


@dataclass(frozen=True)
class MultiConfig:
    """One scenario. Times are virtual seconds."""

    n_acceptors: int = 3
    n_proposers: int = 3
    n_learners: int = 2
    n_clients: int = 3
    commands_per_client: int = 10
    #: Commands a client keeps outstanding at once (this is what makes batches).
    client_concurrency: int = 3
    client_timeout: float = 0.8
    min_delay: float = 0.001
    max_delay: float = 0.010
    #: Probability that a message sent before ``heal_at`` is lost.
    drop_rate: float = 0.0
    #: Probability that a message is delivered twice (at any time).
    duplicate_rate: float = 0.0
    #: Crashes of the current leader (or of any proposer, if none leads).
    leader_crashes: int = 0
    acceptor_crashes: int = 0
    max_downtime: float = 0.6
    #: Random splits of proposers, acceptors and clients.
    partitions: int = 0
    #: Partitions that cut the current leader off from every other node.
    leader_isolations: int = 0
    max_partition: float = 0.8
    #: Moments when two proposers are made to campaign at once.
    duels: int = 0
    heal_at: float = 2.0
    converge_within: float = 5.0
    leader_config: LeaderConfig = field(
        default_factory=lambda: LeaderConfig(
            heartbeat_interval=0.05,
            election_timeout=0.3,
            phase_timeout=0.15,
            window=4,
            max_batch=4,
            max_retransmits=3,
        )
    )
    max_events: int = 2_000_000


def random_leader_config(rng: random.Random) -> LeaderConfig:
    """Sim timings, with a window of 1 (no pipelining) to 16 and batches of 1 to 64."""
    return LeaderConfig(
        heartbeat_interval=0.05,
        election_timeout=0.3,
        phase_timeout=rng.choice((0.1, 0.15, 0.3)),
        window=rng.choice((1, 4, 16)),
        max_batch=rng.choice((1, 4, 64)),
        max_retransmits=rng.choice((1, 3, 10)),
        pre_vote=rng.random() < 0.75,
    )


def faulty_config(seed: int) -> MultiConfig:
    """Every fault at once, in random amounts, then a healed network."""
    rng = random.Random(f"multipaxos-faulty-{seed}")
    return MultiConfig(
        n_acceptors=rng.choice((3, 5)),
        n_learners=rng.choice((2, 3)),
        n_clients=rng.randint(2, 5),
        commands_per_client=rng.randint(5, 25),
        client_concurrency=rng.randint(1, 5),
        drop_rate=rng.uniform(0.0, 0.2),
        duplicate_rate=rng.uniform(0.0, 0.2),
        leader_crashes=rng.randint(0, 3),
        acceptor_crashes=rng.randint(0, 5),
        partitions=rng.randint(0, 3),
        leader_isolations=rng.randint(0, 2),
        duels=rng.randint(0, 3),
        heal_at=3.0,
        leader_config=random_leader_config(rng),
    )


def duel_config(seed: int) -> MultiConfig:
    """Many duels and leader isolations on a slow network: old leaders' Accepts
    are still in flight when a new leader has promised the acceptors."""
    rng = random.Random(f"multipaxos-duel-{seed}")
    return MultiConfig(
        n_acceptors=rng.choice((3, 5)),
        commands_per_client=15,
        max_delay=0.04,
        duplicate_rate=0.1,
        drop_rate=rng.uniform(0.0, 0.1),
        leader_isolations=rng.randint(1, 3),
        duels=rng.randint(2, 5),
        leader_crashes=rng.randint(0, 1),
    )


# Wire messages the harness adds to the roles' ones ----------------------------


@dataclass(frozen=True, slots=True)
class Submit:
    client_id: int
    command: str


@dataclass(frozen=True, slots=True)
class ClientReply:
    command: str
    #: "committed", "rejected" or "unknown".
    outcome: str
    leader_hint: int | None = None


@dataclass(frozen=True, slots=True)
class HeartbeatAnswer:
    from_id: int
    highest_ballot: Ballot


@dataclass(frozen=True, slots=True)
class ContactQuery:
    """Pre-vote: who last had a value accepted here, and when?"""

    seq: int


@dataclass(frozen=True, slots=True)
class ContactAnswer:
    acceptor_id: int
    seq: int
    leader_id: int | None
    seconds_since: float


@dataclass(frozen=True, slots=True)
class LearnedRange:
    first: int
    last: int


Message = (
    PrepareRange
    | Accept
    | PromiseRange
    | Accepted
    | Reject
    | Decide
    | Heartbeat
    | HeartbeatAnswer
    | ContactQuery
    | ContactAnswer
    | Submit
    | ClientReply
    | LearnedRange
)

# Node addresses: (kind, id) with kind in proposer, acceptor, learner, client.
Address = tuple[str, int]


# Events -----------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Deliver:
    src: Address
    dst: Address
    msg: Message
    #: The sending proposer's incarnation (None for other senders).
    src_epoch: int | None
    #: For replies to a proposer: the incarnation that sent the request.
    dst_epoch: int | None


@dataclass(frozen=True, slots=True)
class _ProposerTimer:
    proposer_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class _ClientStart:
    client_id: int


@dataclass(frozen=True, slots=True)
class _ClientResend:
    client_id: int
    command: str
    attempt: int
    #: True for a client timeout: try another proposer.
    timed_out: bool


@dataclass(frozen=True, slots=True)
class _CrashLeader:
    pass


@dataclass(frozen=True, slots=True)
class _RestartProposer:
    proposer_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class _CrashAcceptor:
    acceptor_id: int


@dataclass(frozen=True, slots=True)
class _RestartAcceptor:
    acceptor_id: int
    epoch: int


@dataclass(frozen=True, slots=True)
class _Partition:
    number: int
    side_a: frozenset[Address]


@dataclass(frozen=True, slots=True)
class _IsolateLeader:
    number: int
    duration: float


@dataclass(frozen=True, slots=True)
class _Heal:
    number: int


@dataclass(frozen=True, slots=True)
class _Duel:
    pass


_Event = (
    _Deliver
    | _ProposerTimer
    | _ClientStart
    | _ClientResend
    | _CrashLeader
    | _RestartProposer
    | _CrashAcceptor
    | _RestartAcceptor
    | _Partition
    | _IsolateLeader
    | _Heal
    | _Duel
)

LeaderFactory = Callable[..., Leader]
AcceptorFactory = Callable[[int], Acceptor]


# Nodes ------------------------------------------------------------------------


class AcceptorNode:
    """A :class:`roles.Acceptor` with its memory and its disk (per-instance
    states and the range promise). A step's result reaches the disk only when
    the acceptor says ``persist``, and before the reply leaves."""

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.disk_states: dict[int, AcceptorState] = {}
        self.disk_range = RangePromise()
        self.states: dict[int, AcceptorState] = {}
        self.range = RangePromise()
        self.up = True
        self.epoch = 0
        #: (proposer id, time) of the last Accept this acceptor accepted; memory only.
        self.last_contact: tuple[int, float] | None = None

    def contact(self, seq: int, now: float) -> ContactAnswer:
        aid = self.acceptor.acceptor_id
        if self.last_contact is None:
            return ContactAnswer(aid, seq, None, 0.0)
        return ContactAnswer(aid, seq, self.last_contact[0], now - self.last_contact[1])

    def step(self, msg: PrepareRange | Accept) -> PromiseRange | Accepted | Reject:
        if isinstance(msg, PrepareRange):
            ranged: RangeStep = self.acceptor.on_prepare_range(self.range, self.states, msg)
            if ranged.persist:
                self.disk_range = ranged.range_promise
            self.range = ranged.range_promise
            return ranged.reply
        state = self.states.get(msg.instance, AcceptorState())
        step: AcceptorStep = self.acceptor.on_accept(state, msg, self.range.floor(msg.instance))
        if step.persist:
            self.disk_states[msg.instance] = step.state
        self.states[msg.instance] = step.state
        assert isinstance(step.reply, Accepted | Reject), step.reply
        return step.reply

    def crash(self) -> None:
        self.up = False
        self.last_contact = None
        self.epoch += 1
        self.states = {}
        self.range = RangePromise()

    def restart(self) -> None:
        self.up = True
        self.states = dict(self.disk_states)
        self.range = self.disk_range


class ProposerNode:
    """A proposer process: a :class:`roles.Leader` and the driver's token table."""

    def __init__(self, proposer_id: int) -> None:
        self.proposer_id = proposer_id
        self.leader: Leader | None = None
        self.up = False
        self.epoch = 0
        self.next_token = 1
        self.tokens: dict[int, tuple[int, str]] = {}


class LearnerNode:
    """A :class:`roles.Learner` and the replicated state it applies in order."""

    def __init__(self, learner_id: int, acceptor_ids: frozenset[int]) -> None:
        self.learner_id = learner_id
        self.learner = Learner(acceptor_ids)
        self.applied_through = 0
        #: The decided values, in instance order, as applied.
        self.applied_values: list[bytes] = []
        #: The replicated state: command ids, each applied exactly once.
        self.applied_commands: list[str] = []
        self.applied_set: set[str] = set()
        self.duplicates_skipped = 0
        self.invalid_values: list[str] = []

    def apply_ready(self) -> tuple[int, int] | None:
        """Apply every decided instance right after the applied prefix."""
        first = self.applied_through + 1
        while (learned := self.learner.decision(self.applied_through + 1)) is not None:
            self.applied_through += 1
            self.applied_values.append(learned.value)
            commands = decode_value(learned.value)
            if commands is None:
                self.invalid_values.append(f"instance {learned.instance}: {learned.value!r}")
                continue
            for command in commands:
                if command in self.applied_set:
                    self.duplicates_skipped += 1  # a retried command: exactly once
                else:
                    self.applied_set.add(command)
                    self.applied_commands.append(command)
        return (first, self.applied_through) if self.applied_through >= first else None


class ClientNode:
    def __init__(self, client_id: int, commands: list[str], first_guess: int) -> None:
        self.client_id = client_id
        self.waiting: deque[str] = deque(commands)
        self.attempts: dict[str, int] = {}  # outstanding command -> attempt number
        self.done: set[str] = set()
        self.guess = first_guess


# Results and checks -----------------------------------------------------------


@dataclass
class MultiResult:
    seed: int
    config: MultiConfig
    submitted: set[str]
    votes: list[Accepted]
    #: (proposer_id, InstanceChosen) for every choice a leader reported.
    claims: list[tuple[int, InstanceChosen]]
    learners: list[LearnerNode]
    clients: list[ClientNode]
    #: (proposer_id, role, leader_id) of every proposer at the end (role None: down).
    final_roles: list[tuple[int, Role | None, int | None]]
    first_accept_at: dict[int, float]
    first_noop_at: dict[int, float]
    learner_errors: list[str]
    protocol_errors: list[str]
    stats: Counter[str]
    converged: bool
    events: int
    end_time: float
    trace: list[str]

    def describe(self) -> str:
        cfg = self.config
        applied = min(len(node.applied_commands) for node in self.learners)
        return (
            f"seed={self.seed} acceptors={cfg.n_acceptors} drop={cfg.drop_rate:.2f} "
            f"dup={cfg.duplicate_rate:.2f} leader_crashes={cfg.leader_crashes} "
            f"acceptor_crashes={cfg.acceptor_crashes} partitions={cfg.partitions} "
            f"isolations={cfg.leader_isolations} duels={cfg.duels} events={self.events} "
            f"end={self.end_time:.3f}s applied={applied}/{len(self.submitted)} "
            f"converged={self.converged}"
        )


def check_safety(result: MultiResult) -> list[Violation]:
    """What must hold in every run, however faulty:

    * a ballot carries one value per instance (the vote log);
    * per instance, at most one value is chosen, whoever looks: the vote log,
      every leader's InstanceChosen and every learner ("Paxos Made Simple", 2.1);
    * nobody reports a choice without a majority of votes for it;
    * validity: every chosen value is a no-op or a batch of submitted commands,
      and a no-op was only ever proposed to fill a hole below an instance that
      had already been proposed (section 3);
    * learners applied identical prefixes of the log, and identical states;
    * exactly once: no learner's state holds a command twice;
    * no role raised ProtocolError or SafetyViolation.
    """
    found: list[Violation] = []
    ballot_values: dict[tuple[int, Ballot], set[bytes]] = defaultdict(set)
    for vote in result.votes:
        ballot_values[(vote.instance, vote.ballot)].add(vote.value)
    for (instance, ballot), values in sorted(ballot_values.items()):
        if len(values) > 1:
            found.append(
                Violation("ballot-with-two-values", instance, f"{ballot}: {sorted(values)}")
            )

    truth = chosen_from_votes(result.votes, result.config.n_acceptors)
    claims: dict[int, list[tuple[str, Ballot, bytes]]] = defaultdict(list)
    for instance, by_ballot in truth.items():
        for ballot, value in by_ballot.items():
            claims[instance].append(("votes", ballot, value))
    reports = [(f"leader {pid}", c.instance, c.ballot, c.value) for pid, c in result.claims]
    for node in result.learners:
        for instance in range(1, node.applied_through + 1):
            learned = node.learner.decision(instance)
            assert learned is not None
            reports.append((f"learner {node.learner_id}", instance, learned.ballot, learned.value))
    for who, instance, ballot, value in reports:
        claims[instance].append((who, ballot, value))
        if truth.get(instance, {}).get(ballot) != value:
            found.append(
                Violation(
                    "unfounded-choice",
                    instance,
                    f"{who} reports {value!r} under {ballot} without a majority of votes",
                )
            )
    for instance, seen in sorted(claims.items()):
        if len({value for _, _, value in seen}) > 1:
            listing = ", ".join(f"{who}: {value!r}@{ballot}" for who, ballot, value in seen[:6])
            found.append(Violation("conflicting-choice", instance, listing))
        for value in {value for _, _, value in seen}:
            commands = decode_value(value)
            if commands is None or not set(commands) <= result.submitted:
                found.append(Violation("invalid-value", instance, f"{value!r}"))

    proposed_before = sorted(result.first_accept_at.items())
    for instance, noop_at in sorted(result.first_noop_at.items()):
        if not any(j > instance and at < noop_at for j, at in proposed_before):
            found.append(
                Violation(
                    "noop-not-filling-a-hole",
                    instance,
                    f"no-op proposed at {noop_at:.6f}, no higher instance proposed before",
                )
            )

    longest = max(result.learners, key=lambda node: node.applied_through)
    for node in result.learners:
        if node.applied_values != longest.applied_values[: len(node.applied_values)]:
            found.append(
                Violation(
                    "divergent-log",
                    0,
                    f"learner {node.learner_id} applied a log that is not a prefix of "
                    f"learner {longest.learner_id}'s",
                )
            )
        if node.applied_commands != longest.applied_commands[: len(node.applied_commands)]:
            found.append(
                Violation("divergent-state", 0, f"learner {node.learner_id}'s state diverges")
            )
        twice = [c for c, n in Counter(node.applied_commands).items() if n > 1]
        if twice:
            found.append(Violation("applied-twice", 0, f"learner {node.learner_id}: {twice[:5]}"))
        found.extend(Violation("invalid-value", 0, bad) for bad in node.invalid_values)
    found.extend(Violation("learner-safety", 0, error) for error in result.learner_errors)
    found.extend(Violation("protocol-error", 0, error) for error in result.protocol_errors)
    return found


def check_convergence(result: MultiResult) -> list[str]:
    """Liveness once the network has healed: within the time bound, one leader
    that every other proposer follows, every client done, and every submitted
    command applied (once) by every learner."""
    problems: list[str] = []
    if not result.converged:
        limit = result.config.heal_at + result.config.converge_within
        problems.append(f"did not converge by {limit:.1f}s (ran to {result.end_time:.3f}s)")
    leaders = [pid for pid, role, _ in result.final_roles if role is Role.LEADER]
    if len(leaders) != 1:
        problems.append(f"{len(leaders)} leaders at the end: {result.final_roles}")
    else:
        for pid, role, leader_id in result.final_roles:
            if role is not Role.LEADER and leader_id != leaders[0]:
                problems.append(f"proposer {pid} ({role}) follows {leader_id}, not {leaders[0]}")
    for client in result.clients:
        if client.waiting or client.attempts:
            problems.append(
                f"client {client.client_id}: {len(client.waiting) + len(client.attempts)} "
                "commands never committed"
            )
    for node in result.learners:
        missing = result.submitted - node.applied_set
        if missing:
            problems.append(
                f"learner {node.learner_id} never applied {len(missing)} commands, "
                f"e.g. {sorted(missing)[:3]}"
            )
    return problems


# The simulation ---------------------------------------------------------------


class MultiPaxosSimulation:
    """One seeded run. Build it, call :meth:`run`, check the :class:`MultiResult`."""

    def __init__(
        self,
        seed: int,
        config: MultiConfig | None = None,
        *,
        leader_factory: LeaderFactory = Leader,
        acceptor_factory: AcceptorFactory = Acceptor,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.config = cfg = config or MultiConfig()
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, float, int, _Event]] = []
        self._seq = 0
        self._tracing = trace
        self._trace: list[str] = []
        self._partitions: dict[int, frozenset[Address]] = {}
        self._leader_factory = leader_factory
        self.stats: Counter[str] = Counter()

        self.acceptor_ids = frozenset(range(1, cfg.n_acceptors + 1))
        self.proposer_ids = frozenset(range(1, cfg.n_proposers + 1))
        self.acceptors = {a: AcceptorNode(acceptor_factory(a)) for a in sorted(self.acceptor_ids)}
        self.proposers = {p: ProposerNode(p) for p in sorted(self.proposer_ids)}
        self.learners = [LearnerNode(i, self.acceptor_ids) for i in range(1, cfg.n_learners + 1)]
        self.clients: list[ClientNode] = []
        self.submitted: set[str] = set()
        for cid in range(1, cfg.n_clients + 1):
            commands = [f"c{cid}.{k}" for k in range(1, cfg.commands_per_client + 1)]
            self.submitted.update(commands)
            guess = self.rng.choice(sorted(self.proposer_ids))
            self.clients.append(ClientNode(cid, commands, guess))
            self._push(self.rng.uniform(0.0, 0.1), _ClientStart(cid))
        self._total = len(self.submitted)
        self._clients_done = 0

        self.votes: list[Accepted] = []
        self.claims: list[tuple[int, InstanceChosen]] = []
        self.first_accept_at: dict[int, float] = {}
        self.first_noop_at: dict[int, float] = {}
        self.learner_errors: list[str] = []
        self.protocol_errors: list[str] = []

        for pid in sorted(self.proposer_ids):
            self._boot_proposer(pid)
        self._schedule_faults()

    def _schedule_faults(self) -> None:
        cfg = self.config
        # Faults start once a first leader is likely to exist, and end by heal_at.
        for _ in range(cfg.leader_crashes):
            self._push(self.rng.uniform(0.3, cfg.heal_at), _CrashLeader())
        for _ in range(cfg.acceptor_crashes):
            aid = self.rng.choice(sorted(self.acceptor_ids))
            self._push(self.rng.uniform(0.0, cfg.heal_at), _CrashAcceptor(aid))
        nodes: list[Address] = [("acceptor", a) for a in sorted(self.acceptor_ids)]
        nodes += [("proposer", p) for p in sorted(self.proposer_ids)]
        nodes += [("client", c.client_id) for c in self.clients]
        number = 0
        for _ in range(cfg.partitions):
            side_a = frozenset(n for n in nodes if self.rng.random() < 0.5)
            start = self.rng.uniform(0.0, cfg.heal_at)
            end = min(start + self.rng.uniform(0.0, cfg.max_partition), cfg.heal_at)
            self._push(start, _Partition(number, side_a))
            self._push(end, _Heal(number))
            number += 1
        for _ in range(cfg.leader_isolations):
            start = self.rng.uniform(0.3, cfg.heal_at)
            duration = self.rng.uniform(0.2, cfg.max_partition)
            self._push(start, _IsolateLeader(number, min(duration, cfg.heal_at - start)))
            number += 1
        for _ in range(cfg.duels):
            self._push(self.rng.uniform(0.0, cfg.heal_at), _Duel())

    # The event loop -----------------------------------------------------------

    def run(self) -> MultiResult:
        cfg = self.config
        limit = cfg.heal_at + cfg.converge_within
        events = 0
        converged = False
        while self._queue and events < cfg.max_events:
            at, _, _, event = heapq.heappop(self._queue)
            if at > limit:
                break
            self.now = at
            events += 1
            self._dispatch(event)
            if self.now >= cfg.heal_at and self._converged():
                converged = True
                break
        self.stats["duplicates_skipped"] = sum(n.duplicates_skipped for n in self.learners)
        final_roles: list[tuple[int, Role | None, int | None]] = []
        for pid, node in sorted(self.proposers.items()):
            leader = node.leader if node.up else None
            final_roles.append(
                (pid, leader.role if leader else None, leader.leader_id if leader else None)
            )
        return MultiResult(
            seed=self.seed,
            config=cfg,
            submitted=self.submitted,
            votes=self.votes,
            claims=self.claims,
            learners=self.learners,
            clients=self.clients,
            final_roles=final_roles,
            first_accept_at=self.first_accept_at,
            first_noop_at=self.first_noop_at,
            learner_errors=self.learner_errors,
            protocol_errors=self.protocol_errors,
            stats=self.stats,
            converged=converged,
            events=events,
            end_time=self.now,
            trace=self._trace,
        )

    def _converged(self) -> bool:
        if self._clients_done < len(self.clients):
            return False
        if any(len(node.applied_set) < self._total for node in self.learners):
            return False
        leaders = [
            node.proposer_id
            for node in self.proposers.values()
            if node.up and node.leader is not None and node.leader.role is Role.LEADER
        ]
        if len(leaders) != 1:
            return False
        return all(
            node.up and node.leader is not None and node.leader.leader_id == leaders[0]
            for node in self.proposers.values()
        )

    def _push(self, at: float, event: _Event) -> None:
        # The random middle key reorders events due at the same instant.
        self._seq += 1
        heapq.heappush(self._queue, (at, self.rng.random(), self._seq, event))

    def _log(self, text: str) -> None:
        if self._tracing:
            self._trace.append(f"{self.now:10.6f} {text}")

    def _dispatch(self, event: _Event) -> None:
        match event:
            case _Deliver():
                self._deliver(event)
            case _ProposerTimer(pid, epoch):
                node = self.proposers[pid]
                if node.up and node.epoch == epoch:
                    self._drive(node, lambda leader: leader.on_timer(self.now))
            case _ClientStart(cid):
                client = self.clients[cid - 1]
                for _ in range(self.config.client_concurrency):
                    self._client_next(client)
            case _ClientResend(cid, command, attempt, timed_out):
                client = self.clients[cid - 1]
                if client.attempts.get(command) == attempt:
                    if timed_out:
                        self.stats["client_timeouts"] += 1
                        client.guess = self.rng.choice(sorted(self.proposer_ids))
                    self._client_send(client, command)
            case _CrashLeader():
                self._crash_leader()
            case _RestartProposer(pid, epoch):
                node = self.proposers[pid]
                if not node.up and node.epoch == epoch:
                    self._boot_proposer(pid)
            case _CrashAcceptor(aid):
                self._crash_acceptor(aid)
            case _RestartAcceptor(aid, epoch):
                acceptor = self.acceptors[aid]
                if not acceptor.up and acceptor.epoch == epoch:
                    acceptor.restart()
                    self._log(f"restart acceptor {aid}")
            case _Partition(number, side_a):
                self._log(f"partition {number}: {sorted(side_a)} | rest")
                self.stats["partitions"] += 1
                self._partitions[number] = side_a
            case _IsolateLeader(number, duration):
                leader = self._current_leader()
                if leader is not None:
                    self._log(f"partition {number}: isolate leader {leader}")
                    self.stats["leader_isolations"] += 1
                    self._partitions[number] = frozenset({("proposer", leader)})
                    self._push(self.now + duration, _Heal(number))
            case _Heal(number):
                if self._partitions.pop(number, None) is not None:
                    self._log(f"heal partition {number}")
            case _Duel():
                self._duel()

    # Faults -------------------------------------------------------------------

    def _current_leader(self) -> int | None:
        leaders = [
            pid
            for pid, node in sorted(self.proposers.items())
            if node.up and node.leader is not None and node.leader.role is Role.LEADER
        ]
        return self.rng.choice(leaders) if leaders else None

    def _crash_leader(self) -> None:
        pid = self._current_leader()
        if pid is None:
            up = [p for p, node in sorted(self.proposers.items()) if node.up]
            if not up:
                return
            pid = self.rng.choice(up)
        node = self.proposers[pid]
        node.up = False
        node.epoch += 1
        node.leader = None
        node.tokens = {}
        self.stats["proposer_crashes"] += 1
        downtime = self.rng.uniform(0.05, self.config.max_downtime)
        restart_at = min(self.now + downtime, self.config.heal_at)
        self._log(f"crash proposer {pid} until {restart_at:.3f}")
        self._push(restart_at, _RestartProposer(pid, node.epoch))

    def _boot_proposer(self, pid: int) -> None:
        node = self.proposers[pid]
        node.up = True
        node.leader = self._leader_factory(
            proposer_id=pid,
            acceptor_ids=self.acceptor_ids,
            peer_ids=self.proposer_ids - {pid},
            rng=random.Random(self.rng.getrandbits(64)),
            config=self.config.leader_config,
            encode_batch=encode_batch,
            noop_value=NOOP,
            chosen_through=0,
        )
        self._log(f"boot proposer {pid} (incarnation {node.epoch})")
        self._drive(node, lambda leader: leader.start(self.now))

    def _crash_acceptor(self, aid: int) -> None:
        node = self.acceptors[aid]
        if not node.up:
            return
        node.crash()
        self.stats["acceptor_crashes"] += 1
        downtime = self.rng.uniform(0.0, self.config.max_downtime)
        restart_at = min(self.now + downtime, self.config.heal_at)
        self._log(f"crash acceptor {aid} until {restart_at:.3f}")
        self._push(restart_at, _RestartAcceptor(aid, node.epoch))

    def _duel(self) -> None:
        up = [p for p, node in sorted(self.proposers.items()) if node.up and node.leader]
        followers = [p for p in up if p != self._current_leader()]
        # Two followers at once, if there are two: a leader's campaign() is a no-op.
        pool = followers if len(followers) >= 2 else up
        if len(pool) < 2:
            return
        pair = self.rng.sample(pool, 2)
        self._log(f"duel: proposers {pair} campaign at once")
        self.stats["duels"] += 1
        for pid in pair:
            self._drive(self.proposers[pid], lambda leader: leader.campaign(self.now))

    # Network ------------------------------------------------------------------

    def _send(self, src: Address, dst: Address, msg: Message, dst_epoch: int | None = None) -> None:
        reliable = dst[0] == "learner" or self.now >= self.config.heal_at
        if not reliable and self.rng.random() < self.config.drop_rate:
            self.stats["dropped"] += 1
            self._log(f"drop {src}->{dst} {msg}")
            return
        copies = 1
        if self.rng.random() < self.config.duplicate_rate:
            copies = 2
            self.stats["duplicated"] += 1
        src_epoch = self.proposers[src[1]].epoch if src[0] == "proposer" else None
        for _ in range(copies):
            delay = self.rng.uniform(self.config.min_delay, self.config.max_delay)
            self._push(self.now + delay, _Deliver(src, dst, msg, src_epoch, dst_epoch))

    def _cut_off(self, src: Address, dst: Address) -> bool:
        if "learner" in (src[0], dst[0]):
            return False
        return any((src in side) != (dst in side) for side in self._partitions.values())

    def _deliver(self, event: _Deliver) -> None:
        src, dst, msg = event.src, event.dst, event.msg
        if self._cut_off(src, dst):
            self.stats["partitioned"] += 1
            self._log(f"partitioned {src}->{dst} {msg}")
            return
        kind, number = dst
        if kind == "acceptor":
            self._to_acceptor(number, event)
        elif kind == "proposer":
            node = self.proposers[number]
            if not node.up or (event.dst_epoch is not None and event.dst_epoch != node.epoch):
                self._log(f"lost: proposer {number} is down or restarted {msg}")
                return
            self._log(f"deliver {src}->{dst} {msg}")
            self._to_proposer(node, event)
        elif kind == "learner":
            self._to_learner(self.learners[number - 1], msg)
        else:
            self._to_client(self.clients[number - 1], msg)

    def _to_acceptor(self, aid: int, event: _Deliver) -> None:
        msg = event.msg
        node = self.acceptors[aid]
        if not node.up:
            self._log(f"lost: acceptor {aid} is down {msg}")
            return
        me: Address = ("acceptor", aid)
        if isinstance(msg, ContactQuery):
            self._send(me, event.src, node.contact(msg.seq, self.now), dst_epoch=event.src_epoch)
            return
        assert isinstance(msg, PrepareRange | Accept), msg
        try:
            reply = node.step(msg)
        except ProtocolError as error:
            self.protocol_errors.append(f"acceptor {aid} on {msg}: {error}")
            return
        self._log(f"acceptor {aid} on {msg} -> {reply}")
        if isinstance(reply, Accepted):
            node.last_contact = (reply.ballot.proposer_id, self.now)
            self.votes.append(reply)
            for learner in self.learners:
                self._send(me, ("learner", learner.learner_id), reply)
        # The reply goes back to the incarnation that sent the request.
        self._send(me, event.src, reply, dst_epoch=event.src_epoch)

    def _to_proposer(self, node: ProposerNode, event: _Deliver) -> None:
        msg = event.msg

        def step(leader: Leader) -> list[LeaderEffect]:
            match msg:
                case PromiseRange():
                    return leader.on_promise_range(msg, self.now)
                case Accepted():
                    return leader.on_accepted(msg, self.now)
                case Reject():
                    return leader.on_reject(msg, self.now)
                case Heartbeat():
                    return leader.on_heartbeat(msg, self.now)
                case HeartbeatAnswer(from_id, highest):
                    return leader.on_heartbeat_reply(from_id, highest, self.now)
                case ContactAnswer(aid, seq, leader_id, since):
                    return leader.on_leader_contact(aid, seq, leader_id, since, self.now)
                case LearnedRange(first, last):
                    effects: list[LeaderEffect] = []
                    for instance in range(first, last + 1):
                        effects += leader.on_learned(instance, self.now)
                    return effects
                case Submit(client_id, command):
                    token = node.next_token
                    node.next_token += 1
                    node.tokens[token] = (client_id, command)
                    return leader.submit(token, command.encode(), self.now)
            raise AssertionError(f"unexpected message for a proposer: {msg}")

        self._drive(node, step, request=event)

    def _to_learner(self, node: LearnerNode, msg: Message) -> None:
        try:
            if isinstance(msg, Accepted):
                node.learner.on_accepted(msg)
            elif isinstance(msg, Decide):
                node.learner.on_decide(msg)
            else:
                raise AssertionError(f"unexpected message for a learner: {msg}")
        except SafetyViolation as error:
            self.learner_errors.append(f"learner {node.learner_id}: {error}")
            return
        except ProtocolError as error:
            self.protocol_errors.append(f"learner {node.learner_id} on {msg}: {error}")
            return
        applied = node.apply_ready()
        if applied is not None and node.learner_id == 1:
            for pid in sorted(self.proposer_ids):
                self._send(("learner", 1), ("proposer", pid), LearnedRange(*applied))

    # Clients ------------------------------------------------------------------

    def _client_next(self, client: ClientNode) -> None:
        if client.waiting:
            command = client.waiting.popleft()
            client.attempts[command] = 0
            self._client_send(client, command)

    def _client_send(self, client: ClientNode, command: str) -> None:
        attempt = client.attempts[command] + 1
        client.attempts[command] = attempt
        self.stats["client_sends"] += 1
        self._send(
            ("client", client.client_id),
            ("proposer", client.guess),
            Submit(client.client_id, command),
        )
        at = self.now + self.config.client_timeout
        self._push(at, _ClientResend(client.client_id, command, attempt, timed_out=True))

    def _to_client(self, client: ClientNode, msg: Message) -> None:
        assert isinstance(msg, ClientReply), msg
        attempt = client.attempts.get(msg.command)
        if attempt is None:
            return  # already committed: a late or duplicate answer
        if msg.outcome == "committed":
            del client.attempts[msg.command]
            client.done.add(msg.command)
            self._client_next(client)
            if not client.waiting and not client.attempts:
                self._clients_done += 1
            return
        # Rejected (never assigned) or unknown (may be chosen): send the same
        # command id again, to the hinted leader if there is one.
        self.stats[f"client_{msg.outcome}"] += 1
        others = sorted(self.proposer_ids - {client.guess})
        client.guess = msg.leader_hint or self.rng.choice(others)
        retry_at = self.now + self.rng.uniform(0.005, 0.03)
        self._push(retry_at, _ClientResend(client.client_id, msg.command, attempt, timed_out=False))

    # The proposer driver ------------------------------------------------------

    def _drive(
        self,
        node: ProposerNode,
        step: Callable[[Leader], list[LeaderEffect]],
        *,
        request: _Deliver | None = None,
    ) -> None:
        leader = node.leader
        assert leader is not None
        try:
            effects = step(leader)
        except ProtocolError as error:
            self.protocol_errors.append(f"proposer {node.proposer_id}: {error}")
            return
        me: Address = ("proposer", node.proposer_id)
        for effect in effects:
            self._log(f"proposer {node.proposer_id} -> {effect}")
            match effect:
                case SendToAcceptors(message, to):
                    if isinstance(message, Accept):
                        self.first_accept_at.setdefault(message.instance, self.now)
                        if message.value == NOOP:
                            self.first_noop_at.setdefault(message.instance, self.now)
                    for aid in sorted(to if to is not None else self.acceptor_ids):
                        self._send(me, ("acceptor", aid), message)
                    if to is not None:
                        self.stats["retransmissions"] += 1
                case AskLeaderContact(seq):
                    for aid in sorted(self.acceptor_ids):
                        self._send(me, ("acceptor", aid), ContactQuery(seq))
                    self.stats["pre_votes"] += 1
                case SendHeartbeat(heartbeat):
                    for pid in sorted(self.proposer_ids - {node.proposer_id}):
                        self._send(me, ("proposer", pid), heartbeat)
                case AnswerHeartbeat(to, highest):
                    assert request is not None and request.src == ("proposer", to)
                    answer = HeartbeatAnswer(node.proposer_id, highest)
                    self._send(me, ("proposer", to), answer, dst_epoch=request.src_epoch)
                case SetTimer(at):
                    self._push(at, _ProposerTimer(node.proposer_id, node.epoch))
                case InstanceChosen():
                    self.claims.append((node.proposer_id, effect))
                    self.stats["chosen"] += 1
                    self.stats["commands_in_batches"] += len(effect.tokens)
                    if len(effect.tokens) > 1:
                        self.stats["multi_command_batches"] += 1
                    if effect.value == NOOP:
                        self.stats["noops_chosen"] += 1
                    for learner in self.learners:
                        self._send(me, ("learner", learner.learner_id), effect.decide)
                    self._answer(node, effect.tokens, "committed", None)
                case Assigned():
                    pass
                case Rejected(tokens, hint):
                    self._answer(node, tokens, "rejected", hint)
                case OutcomeUnknown(tokens):
                    self.stats["outcome_unknown"] += len(tokens)
                    self._answer(node, tokens, "unknown", None)
                case BecameLeader(ballot, from_instance):
                    self.stats["elections"] += 1
                    recovered = node.leader.next_instance - from_instance if node.leader else 0
                    self.stats["recovered_instances"] += recovered
                    if node.epoch > 0 and from_instance == 1 and recovered > 0:
                        # A restarted proposer (chosen_through=0) re-proposed the log.
                        self.stats["restarted_leader_recovered_from_1"] += 1
                    self._log(f"proposer {node.proposer_id} leads with {ballot}")
                case SteppedDown():
                    self.stats["step_downs"] += 1
                case _:
                    raise AssertionError(f"unknown effect {effect}")

    def _answer(self, node: ProposerNode, tokens: tuple[int, ...], outcome: str, hint: Any) -> None:
        me: Address = ("proposer", node.proposer_id)
        for token in tokens:
            client_id, command = node.tokens.pop(token)
            self._send(me, ("client", client_id), ClientReply(command, outcome, hint))


def run_seed(
    seed: int,
    config: MultiConfig,
    *,
    leader_factory: LeaderFactory = Leader,
    acceptor_factory: AcceptorFactory = Acceptor,
    trace: bool = False,
) -> MultiResult:
    return MultiPaxosSimulation(
        seed,
        config,
        leader_factory=leader_factory,
        acceptor_factory=acceptor_factory,
        trace=trace,
    ).run()


# Deliberately broken variants, to prove the checker can fail ----------------------


class AmnesiacLeader(Leader):
    """Ignores the values the promises report: every instance from its first
    one on gets a no-op or a new command, even one that may have been chosen
    (violates P2c, "Paxos Made Simple" section 2.2, applied per instance in 3)."""

    def _adopt(self, promises: Any) -> dict[int, bytes]:
        return {}


class FloorIgnoringAcceptor(Acceptor):
    """Forgets its range promise when asked to accept: an old leader's Accept
    still lands after a new leader has been promised every instance."""

    def on_accept(
        self, state: AcceptorState, msg: Accept, floor: Ballot = ZERO_BALLOT
    ) -> AcceptorStep:
        return super().on_accept(state, msg)
