"""A seeded, in-memory Paxos cluster: the test harness for :mod:`roles`.

Everything here is driven by one ``random.Random(seed)``, so a run is a pure
function of its seed and its :class:`SimConfig`; replaying a seed replays the
exact schedule. The model follows etcd-io/raft's ``rafttest``:

* A discrete-event queue ordered by virtual time. Events due at the same time
  are ordered by a draw from the seeded RNG, so ties are reordered too.
* The network delays every message by a random amount (which reorders them),
  and before ``heal_at`` it also drops, duplicates and partitions them.
* Acceptors crash and restart before ``heal_at``. A crash loses whatever the
  acceptor had not made durable and every message in flight to or from it.
  Only a state returned with ``persist=True`` reaches the "disk", and it is
  written *before* the reply is put on the wire, as the acceptor's rule asks.
* After ``heal_at`` the network is reliable (still delayed, reordered and
  duplicated), so a correct cluster must decide every instance.

The harness never asserts. :func:`check_safety` and :func:`check_liveness`
return what they found, so a test can equally demand "nothing" from a correct
cluster and "something" from a deliberately broken one.
"""

from __future__ import annotations

import heapq
import random
from collections import defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field

from roles import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    AcceptorStep,
    Ballot,
    Chosen,
    Conflict,
    Decide,
    Effect,
    GaveUp,
    Learner,
    Prepare,
    Promise,
    Proposer,
    ProposerConfig,
    ProtocolError,
    Reject,
    SendToAcceptors,
    SetTimer,
    majority,
)

Message = Prepare | Accept | Promise | Accepted | Reject | Decide
AcceptorFactory = Callable[[int], Acceptor]

# Node addresses: ("acceptor", id), ("proposer", id) or LEARNER.
Address = tuple[str, int]
LEARNER: Address = ("learner", 0)


@dataclass(frozen=True)
class SimConfig:
    """One scenario. Times are virtual seconds."""

    n_acceptors: int = 3
    n_proposers: int = 2
    instances: tuple[int, ...] = (1, 2, 3)
    min_delay: float = 0.001
    max_delay: float = 0.010
    #: Probability that a message sent before ``heal_at`` is lost.
    drop_rate: float = 0.0
    #: Probability that a message is delivered twice (at any time).
    duplicate_rate: float = 0.0
    #: Acceptor crashes, each at a random time before ``heal_at``.
    crashes: int = 0
    max_downtime: float = 0.3
    #: Network partitions (random split of acceptors and proposers) before ``heal_at``.
    partitions: int = 0
    max_partition: float = 0.5
    #: Each proposer starts each instance at a random time in ``[0, start_spread]``.
    start_spread: float = 0.02
    heal_at: float = 1.0
    deadline: float = 30.0
    proposer_config: ProposerConfig = field(
        default_factory=lambda: ProposerConfig(
            phase_timeout=0.05, backoff_base=0.005, backoff_max=0.1
        )
    )
    #: Safety net against a harness or protocol bug that loops forever.
    max_events: int = 1_000_000


def faulty_config(seed: int) -> SimConfig:
    """Drops, duplicates, reordering, crash-restarts and partitions, then healing."""
    rng = random.Random(f"faulty-config-{seed}")
    return SimConfig(
        n_acceptors=rng.choice((3, 5)),
        n_proposers=rng.randint(2, 4),
        drop_rate=rng.uniform(0.0, 0.3),
        duplicate_rate=rng.uniform(0.0, 0.2),
        crashes=rng.randint(0, 6),
        partitions=rng.randint(0, 2),
        start_spread=rng.choice((0.0, 0.02, 0.5)),
    )


def crash_heavy_config(seed: int) -> SimConfig:
    """Frequent, brief acceptor crashes while slow messages are in flight: the
    schedule that punishes an acceptor which forgets a promise across a restart."""
    rng = random.Random(f"crash-heavy-config-{seed}")
    return SimConfig(
        n_acceptors=3,
        n_proposers=rng.randint(2, 4),
        max_delay=0.05,
        duplicate_rate=0.3,
        crashes=100,
        max_downtime=0.003,
        start_spread=0.0,
        proposer_config=ProposerConfig(phase_timeout=0.2, backoff_base=0.005, backoff_max=0.1),
    )


def benign_config(seed: int) -> SimConfig:
    """No loss, no crash, no partition: only delay, reordering and duplicates."""
    rng = random.Random(f"benign-config-{seed}")
    return SimConfig(
        n_acceptors=rng.choice((3, 5)),
        n_proposers=rng.randint(2, 4),
        duplicate_rate=rng.uniform(0.0, 0.2),
        start_spread=rng.choice((0.0, 0.02)),
        heal_at=0.0,
    )


# Events ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class _Deliver:
    src: Address
    dst: Address
    msg: Message
    #: The sender's incarnation; a crash voids every message of the old one.
    src_incarnation: int


@dataclass(frozen=True, slots=True)
class _Start:
    proposer_id: int
    instance: int


@dataclass(frozen=True, slots=True)
class _Timer:
    proposer_id: int
    instance: int


@dataclass(frozen=True, slots=True)
class _Crash:
    acceptor_id: int


@dataclass(frozen=True, slots=True)
class _Restart:
    acceptor_id: int
    incarnation: int


@dataclass(frozen=True, slots=True)
class _Partition:
    number: int
    side_a: frozenset[Address]


@dataclass(frozen=True, slots=True)
class _Heal:
    number: int


_Event = _Deliver | _Start | _Timer | _Crash | _Restart | _Partition | _Heal


# Nodes ----------------------------------------------------------------------


class AcceptorNode:
    """One acceptor process: the pure :class:`roles.Acceptor` plus its memory and disk.

    ``memory`` is what the running process holds; ``disk`` is what survives a
    crash. For a correct acceptor the two are always equal, because a step's
    state changes exactly when ``persist`` is true.
    """

    def __init__(self, acceptor: Acceptor) -> None:
        self.acceptor = acceptor
        self.disk: dict[int, AcceptorState] = {}
        self.memory: dict[int, AcceptorState] = {}
        self.up = True
        #: Bumped by every crash: the restarted process is a new incarnation.
        self.incarnation = 0

    def step(self, msg: Prepare | Accept) -> AcceptorStep:
        state = self.memory.get(msg.instance, AcceptorState())
        if isinstance(msg, Prepare):
            result = self.acceptor.on_prepare(state, msg)
        else:
            result = self.acceptor.on_accept(state, msg)
        if result.persist:
            # Durable before the reply exists anywhere else.
            self.disk[msg.instance] = result.state
        self.memory[msg.instance] = result.state
        return result

    def crash(self) -> None:
        self.up = False
        self.incarnation += 1
        self.memory = {}

    def restart(self) -> None:
        self.up = True
        self.memory = dict(self.disk)


# Results and checks ---------------------------------------------------------


@dataclass
class SimResult:
    seed: int
    config: SimConfig
    #: instance -> the values the proposers were asked to propose.
    proposed: dict[int, set[bytes]]
    #: Every Accepted an acceptor sent, in the order they were sent.
    votes: list[Accepted]
    #: (proposer_id, instance) -> the proposer's final outcome (None: never finished).
    outcomes: dict[tuple[int, int], Chosen | GaveUp | None]
    learner: Learner
    learner_errors: list[str]
    protocol_errors: list[str]
    events: int
    end_time: float
    trace: list[str]

    def describe(self) -> str:
        decided = self.learner.decided_instances
        return (
            f"seed={self.seed} acceptors={self.config.n_acceptors} "
            f"proposers={self.config.n_proposers} instances={len(self.config.instances)} "
            f"drop={self.config.drop_rate:.2f} dup={self.config.duplicate_rate:.2f} "
            f"crashes={self.config.crashes} partitions={self.config.partitions} "
            f"events={self.events} end={self.end_time:.3f}s learned={decided}"
        )


@dataclass(frozen=True)
class Violation:
    kind: str
    #: 0 when the violation is not about one instance.
    instance: int
    detail: str

    def __str__(self) -> str:
        where = f" instance {self.instance}:" if self.instance else ""
        return f"[{self.kind}]{where} {self.detail}"


def chosen_from_votes(votes: list[Accepted], n_acceptors: int) -> dict[int, dict[Ballot, bytes]]:
    """Ground truth, computed from every vote cast: a ballot accepted by a
    majority of acceptors chose its value ("Paxos Made Simple", section 2.1)."""
    voters: dict[tuple[int, Ballot], set[int]] = defaultdict(set)
    values: dict[tuple[int, Ballot], bytes] = {}
    for vote in votes:
        voters[(vote.instance, vote.ballot)].add(vote.acceptor_id)
        values.setdefault((vote.instance, vote.ballot), vote.value)
    chosen: dict[int, dict[Ballot, bytes]] = defaultdict(dict)
    for (instance, ballot), who in voters.items():
        if len(who) >= majority(n_acceptors):
            chosen[instance][ballot] = values[(instance, ballot)]
    return dict(chosen)


def check_safety(result: SimResult) -> list[Violation]:
    """Everything that must hold in any run, however faulty the network:

    * a ballot carries one value;
    * per instance, at most one value is chosen, whoever looks: the vote log,
      every proposer's :class:`Chosen` and the learner;
    * a proposer or learner never reports a choice without a majority of votes;
    * the chosen value is one that was proposed (validity);
    * no role raised :class:`ProtocolError` or :class:`SafetyViolation`.
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
    for (proposer_id, instance), outcome in sorted(result.outcomes.items()):
        if isinstance(outcome, Chosen):
            decide = outcome.decide
            claims[instance].append((f"proposer {proposer_id}", decide.ballot, decide.value))
            if truth.get(instance, {}).get(decide.ballot) != decide.value:
                found.append(
                    Violation(
                        "unfounded-choice",
                        instance,
                        f"proposer {proposer_id} reports {decide.value!r} under "
                        f"{decide.ballot} without a majority of votes for it",
                    )
                )
    for instance in result.config.instances:
        learned = result.learner.decision(instance)
        if learned is not None:
            claims[instance].append(("learner", learned.ballot, learned.value))
            if truth.get(instance, {}).get(learned.ballot) != learned.value:
                found.append(
                    Violation(
                        "unfounded-choice",
                        instance,
                        f"learner learned {learned.value!r} under {learned.ballot} "
                        "without a majority of votes for it",
                    )
                )

    for instance, seen in sorted(claims.items()):
        if len({value for _, _, value in seen}) > 1:
            listing = ", ".join(f"{who}: {value!r}@{ballot}" for who, ballot, value in seen)
            found.append(Violation("conflicting-choice", instance, listing))
        for who, ballot, value in seen:
            if value not in result.proposed.get(instance, set()):
                found.append(
                    Violation(
                        "invalid-value", instance, f"{who}: {value!r}@{ballot} was never proposed"
                    )
                )
    found.extend(Violation("learner-safety", 0, error) for error in result.learner_errors)
    found.extend(Violation("protocol-error", 0, error) for error in result.protocol_errors)
    return found


def check_liveness(result: SimResult) -> list[str]:
    """Every instance is learned and every proposer saw a value chosen."""
    problems: list[str] = []
    for instance in result.config.instances:
        if result.learner.decision(instance) is None:
            problems.append(f"instance {instance}: the learner never learned a value")
    for (proposer_id, instance), outcome in sorted(result.outcomes.items()):
        if not isinstance(outcome, Chosen):
            problems.append(f"proposer {proposer_id}, instance {instance}: ended with {outcome!r}")
    return problems


# The simulation -------------------------------------------------------------


class Simulation:
    """One seeded run. Build it, call :meth:`run`, check the :class:`SimResult`."""

    def __init__(
        self,
        seed: int,
        config: SimConfig | None = None,
        *,
        acceptor_factory: AcceptorFactory = Acceptor,
        trace: bool = False,
    ) -> None:
        self.seed = seed
        self.config = config or SimConfig()
        self.rng = random.Random(seed)
        self.now = 0.0
        self._queue: list[tuple[float, float, int, _Event]] = []
        self._seq = 0
        self._tracing = trace
        self._trace: list[str] = []
        self._partition: tuple[int, frozenset[Address]] | None = None

        cfg = self.config
        acceptor_ids = frozenset(range(1, cfg.n_acceptors + 1))
        self.acceptors = {aid: AcceptorNode(acceptor_factory(aid)) for aid in acceptor_ids}
        self.learner = Learner(acceptor_ids)
        self.proposed: dict[int, set[bytes]] = defaultdict(set)
        self.proposers: dict[tuple[int, int], Proposer] = {}
        for pid in range(1, cfg.n_proposers + 1):
            for instance in cfg.instances:
                value = f"value-{instance}-from-{pid}".encode()
                self.proposed[instance].add(value)
                self.proposers[(pid, instance)] = Proposer(
                    proposer_id=pid,
                    instance=instance,
                    value=value,
                    acceptor_ids=acceptor_ids,
                    rng=random.Random(self.rng.getrandbits(64)),
                    deadline=cfg.deadline,
                    config=cfg.proposer_config,
                )
                self._push(self.rng.uniform(0.0, cfg.start_spread), _Start(pid, instance))
        self.votes: list[Accepted] = []
        self.learner_errors: list[str] = []
        self.protocol_errors: list[str] = []

        for _ in range(cfg.crashes):
            aid = self.rng.choice(sorted(acceptor_ids))
            self._push(self.rng.uniform(0.0, cfg.heal_at), _Crash(aid))
        nodes: list[Address] = [("acceptor", a) for a in sorted(acceptor_ids)]
        nodes += [("proposer", p) for p in range(1, cfg.n_proposers + 1)]
        for number in range(cfg.partitions):
            side_a = frozenset(n for n in nodes if self.rng.random() < 0.5)
            start = self.rng.uniform(0.0, cfg.heal_at)
            end = min(start + self.rng.uniform(0.0, cfg.max_partition), cfg.heal_at)
            self._push(start, _Partition(number, side_a))
            self._push(end, _Heal(number))

    # The event loop ---------------------------------------------------------

    def run(self) -> SimResult:
        events = 0
        while self._queue and events < self.config.max_events:
            at, _, _, event = heapq.heappop(self._queue)
            self.now = at
            events += 1
            self._dispatch(event)
        return SimResult(
            seed=self.seed,
            config=self.config,
            proposed=dict(self.proposed),
            votes=self.votes,
            outcomes={key: p.outcome for key, p in self.proposers.items()},
            learner=self.learner,
            learner_errors=self.learner_errors,
            protocol_errors=self.protocol_errors,
            events=events,
            end_time=self.now,
            trace=self._trace,
        )

    def _push(self, at: float, event: _Event) -> None:
        # The random middle key reorders events due at the same instant.
        self._seq += 1
        heapq.heappush(self._queue, (at, self.rng.random(), self._seq, event))

    def _record(self, text: str) -> None:
        """Add a line to the trace, when tracing."""
        if self._tracing:
            self._trace.append(f"{self.now:10.6f} {text}")

    def _dispatch(self, event: _Event) -> None:
        match event:
            case _Deliver():
                self._deliver(event)
            case _Start(pid, instance):
                self._record(f"start proposer {pid} instance {instance}")
                self._drive(self.proposers[(pid, instance)], lambda p: p.start(self.now))
            case _Timer(pid, instance):
                # Stale timers are delivered too: the proposer must ignore early calls.
                self._drive(self.proposers[(pid, instance)], lambda p: p.on_timer(self.now))
            case _Crash(aid):
                node = self.acceptors[aid]
                if node.up:
                    node.crash()
                    downtime = self.rng.uniform(0.0, self.config.max_downtime)
                    self._record(f"crash acceptor {aid} for {downtime:.3f}s")
                    restart_at = min(self.now + downtime, self.config.heal_at)
                    self._push(restart_at, _Restart(aid, node.incarnation))
            case _Restart(aid, incarnation):
                node = self.acceptors[aid]
                if not node.up and node.incarnation == incarnation:
                    node.restart()
                    self._record(f"restart acceptor {aid} with {node.memory}")
            case _Partition(number, side_a):
                self._record(f"partition {number}: {sorted(side_a)} | rest")
                self._partition = (number, side_a)
            case _Heal(number):
                if self._partition is not None and self._partition[0] == number:
                    self._record(f"heal partition {number}")
                    self._partition = None

    # Network ----------------------------------------------------------------

    def _send(self, src: Address, dst: Address, msg: Message, *, lossy: bool = True) -> None:
        if lossy and self.now < self.config.heal_at and self.rng.random() < self.config.drop_rate:
            self._record(f"drop {src}->{dst} {msg}")
            return
        copies = 2 if self.rng.random() < self.config.duplicate_rate else 1
        incarnation = self.acceptors[src[1]].incarnation if src[0] == "acceptor" else 0
        for _ in range(copies):
            delay = self.rng.uniform(self.config.min_delay, self.config.max_delay)
            self._push(self.now + delay, _Deliver(src, dst, msg, incarnation))

    def _cut_off(self, src: Address, dst: Address) -> bool:
        if self._partition is None or LEARNER in (src, dst):
            return False
        side_a = self._partition[1]
        return (src in side_a) != (dst in side_a)

    def _deliver(self, event: _Deliver) -> None:
        src, dst, msg = event.src, event.dst, event.msg
        if src[0] == "acceptor" and dst != LEARNER:
            node = self.acceptors[src[1]]
            if not node.up or node.incarnation != event.src_incarnation:
                self._record(f"lost with crashed sender {src}->{dst} {msg}")
                return
        if self._cut_off(src, dst):
            self._record(f"partitioned {src}->{dst} {msg}")
            return
        self._record(f"deliver {src}->{dst} {msg}")
        if dst[0] == "acceptor":
            self._to_acceptor(dst[1], src, msg)
        elif dst[0] == "proposer":
            self._to_proposer(dst[1], msg)
        else:
            self._to_learner(msg)

    def _to_acceptor(self, aid: int, src: Address, msg: Message) -> None:
        node = self.acceptors[aid]
        if not node.up:
            self._record(f"acceptor {aid} is down")
            return
        assert isinstance(msg, Prepare | Accept), msg
        try:
            step = node.step(msg)
        except ProtocolError as error:
            self.protocol_errors.append(f"acceptor {aid} on {msg}: {error}")
            return
        if isinstance(step.reply, Accepted):
            self.votes.append(step.reply)
            self._send(("acceptor", aid), LEARNER, step.reply, lossy=False)
        self._send(("acceptor", aid), src, step.reply)

    def _to_proposer(self, pid: int, msg: Message) -> None:
        assert isinstance(msg, Promise | Accepted | Reject), msg
        proposer = self.proposers[(pid, msg.instance)]
        self._drive(proposer, lambda p: p.on_message(msg, self.now))

    def _to_learner(self, msg: Message) -> None:
        try:
            learned = None
            if isinstance(msg, Accepted):
                learned = self.learner.on_accepted(msg)
            elif isinstance(msg, Decide):
                learned = self.learner.on_decide(msg)
            if isinstance(learned, Conflict):
                self.learner_errors.append(learned.describe())
        except ProtocolError as error:
            self.protocol_errors.append(f"learner on {msg}: {error}")

    def _drive(self, proposer: Proposer, step: Callable[[Proposer], list[Effect]]) -> None:
        try:
            effects = step(proposer)
        except ProtocolError as error:
            self.protocol_errors.append(f"proposer {proposer.proposer_id}: {error}")
            return
        me: Address = ("proposer", proposer.proposer_id)
        for effect in effects:
            self._record(f"proposer {proposer.proposer_id} -> {effect}")
            match effect:
                case SendToAcceptors(message, to):
                    for aid in sorted(self.acceptors):
                        if to is None or aid in to:
                            self._send(me, ("acceptor", aid), message)
                case SetTimer(at):
                    self._push(at, _Timer(proposer.proposer_id, proposer.instance))
                case Chosen(decide):
                    self._send(me, LEARNER, decide, lossy=False)
                case GaveUp():
                    pass


def run_seed(
    seed: int,
    config: SimConfig,
    *,
    acceptor_factory: AcceptorFactory = Acceptor,
    trace: bool = False,
) -> SimResult:
    return Simulation(seed, config, acceptor_factory=acceptor_factory, trace=trace).run()
