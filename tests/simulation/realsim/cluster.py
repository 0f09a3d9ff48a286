"""A whole cluster of the real service code in one process, on virtual time.

Every node is started by the same function the CLI uses
(:func:`~paxos_service.servers.start.start_acceptor`,
:func:`~paxos_service.servers.start.start_proposer`,
:func:`~paxos_service.servers.start.start_learner`), over real SQLite files,
inside its own :mod:`contextvars` context in which a :class:`SimRuntime` is
installed: :func:`paxos_service.transport.server.start_server` then attaches it to the
in-memory network instead of a socket, :func:`paxos_service.transport.tls.aio_channel`
dials through that network, storage calls run on a :class:`SimExecutor`, and
randomness comes from the run's seed. Nothing of the service is copied here.

A crash detaches the node from the network, cancels every task it owns and
drops the storage calls it queued but that did not run (the commits it had not
made are lost; SQLite keeps exactly what was committed). A restart builds the
node again from its files. Proposers keep nothing, so each restart is a
proposer with no state.

The harness records what the checkers (:mod:`tests.simulation.realsim.checkers`)
need: every vote an acceptor made durable, every log entry each learner
applied and what it did, every client operation with its answer, every
single-decree Propose answer.
"""

from __future__ import annotations

import asyncio
import contextvars
import random
import tempfile
from collections.abc import Callable, Coroutine, Mapping, Sequence
from concurrent.futures import Executor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from grpc_health.v1 import health, health_pb2, health_pb2_grpc

from paxos_service.core import runtime
from paxos_service.core.config import (
    DEFAULT_RETAIN_LOG_BYTES,
    AcceptorConfig,
    LearnerConfig,
    ProposerConfig,
)
from paxos_service.kv.state_machine import Applied
from paxos_service.servers.start import start_acceptor, start_learner, start_proposer
from paxos_service.storage.contract import StorageError
from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.transport.server import LIVENESS, RoleServer
from paxos_service.v1 import paxos_pb2 as pb
from roles import AcceptorState, Ballot, RangePromise
from roles.acceptor import report_start
from tests.simulation.realsim.executor import SimExecutor
from tests.simulation.realsim.net import NetFaults, SimNetwork, SimServer
from tests.simulation.realsim.vloop import NODE, VirtualEventLoop


@dataclass
class Vote:
    """An acceptor made ``(ballot, value)`` durable for ``instance``."""

    acceptor: int
    instance: int
    ballot: Ballot
    value: bytes


@dataclass
class AppliedEntry:
    learner: int
    instance: int
    entry: bytes
    results: list[pb.CommandResult]


class AcceptorMonitor:
    """What one acceptor has said it holds, step by step, to check that it
    keeps its word (Paxos P1a: never accept below a promise; and a phase 1
    reply reports every vote). It watches the real servicer from outside:
    every write queued for commit, in the order the servicer decided them,
    and every range promise decision with the states it read. A crash keeps
    only what was committed."""

    def __init__(self, acceptor: int, problems: list[str]) -> None:
        self.acceptor = acceptor
        self.problems = problems
        self.durable: dict[int, AcceptorState] = {}
        self.durable_range = RangePromise()
        self.queued: dict[int, AcceptorState] = {}
        self.queued_range = RangePromise()

    def restarted(self) -> None:
        self.queued = dict(self.durable)
        self.queued_range = self.durable_range

    def committed(
        self, writes: Sequence[tuple[int, AcceptorState]], rp: RangePromise | None
    ) -> None:
        self.durable.update(writes)
        if rp is not None:
            self.durable_range = rp

    def queue_state(self, instance: int, state: AcceptorState) -> None:
        before = self.queued.get(instance, AcceptorState())
        floor = self.queued_range.floor(instance)
        if (
            state.accepted_value is not None
            and state.accepted_ballot != before.accepted_ballot
            and state.accepted_ballot < max(floor, before.promised_ballot)
        ):
            self.problems.append(
                f"acceptor {self.acceptor} accepted {state.accepted_ballot} at instance "
                f"{instance} after promising {max(floor, before.promised_ballot)}"
            )
        self.queued[instance] = state

    def queue_range(self, promise: RangePromise) -> None:
        self.queued_range = promise

    def range_read(self, first: int, states: Mapping[int, AcceptorState]) -> None:
        for instance, state in sorted(self.queued.items()):
            if instance < first or state.accepted_value is None:
                continue
            seen = states.get(instance)
            if seen is None or seen.accepted_ballot != state.accepted_ballot:
                self.problems.append(
                    f"acceptor {self.acceptor}: a phase 1 from instance {first} read "
                    f"{'nothing' if seen is None else seen.accepted_ballot} at instance "
                    f"{instance}, which holds a vote at {state.accepted_ballot}"
                )


@dataclass
class Recorder:
    votes: list[Vote] = field(default_factory=list)
    #: Broken promises and incomplete phase 1 replies (AcceptorMonitor).
    acceptor_word: list[str] = field(default_factory=list)
    monitors: dict[int, AcceptorMonitor] = field(default_factory=dict)
    applied: list[AppliedEntry] = field(default_factory=list)
    #: (acceptor key, value) of every single-decree Propose answered OK.
    proposals: list[tuple[int, bytes]] = field(default_factory=list)
    events: list[str] = field(default_factory=list)
    #: The highest compaction point any acceptor saved.
    compacted_through: int = 0


@dataclass
class StorageFaults:
    """Storage faults drawn from the seed."""

    #: Probability that one commit fails (an fsync error): the acceptor stops
    #: voting until it is restarted.
    commit_failure: float = 0.0
    #: Storage calls take (min, max) virtual seconds; a few take ``slow``.
    delay: tuple[float, float] = (0.0002, 0.002)
    slow_probability: float = 0.0
    slow: tuple[float, float] = (0.05, 0.4)


class RecordingStorage(SqliteAcceptorStorage):
    """The real SQLite acceptor storage; records every vote once committed,
    and fails a commit now and then when told to."""

    def __init__(
        self, path: Path, acceptor_id: int, recorder: Recorder, faults: StorageFaults, rng: Any
    ) -> None:
        super().__init__(path, acceptor_id=acceptor_id, cluster_id="sim")
        self._recorder = recorder
        self._faults = faults
        self._rng = rng

    def save(
        self,
        writes: Sequence[tuple[int, AcceptorState]],
        range_promise: RangePromise | None = None,
        chosen_through: int | None = None,
        compacted_through: int | None = None,
    ) -> None:
        if self._faults.commit_failure and self._rng.random() < self._faults.commit_failure:
            raise StorageError("disk I/O error (simulated fsync failure)")
        super().save(writes, range_promise, chosen_through, compacted_through)
        if compacted_through is not None:
            self._recorder.compacted_through = max(
                self._recorder.compacted_through, compacted_through
            )
        self._recorder.monitors[self.acceptor_id].committed(writes, range_promise)
        for instance, state in writes:
            if state.accepted_value is not None:
                self._recorder.votes.append(
                    Vote(self.acceptor_id, instance, state.accepted_ballot, state.accepted_value)
                )


class SimRuntime:
    """What one node sees of the world (see :mod:`paxos_service.core.runtime`)."""

    def __init__(self, cluster: SimCluster, node: str) -> None:
        self.cluster = cluster
        self.node = node
        self.executors: list[SimExecutor] = []
        self._rng = random.Random(cluster.rng.random())

    async def serve(
        self,
        config: Any,
        service_name: str,
        register: Callable[[Any], None],
        *,
        serving: bool,
        extra_services: tuple[str, ...],
    ) -> RoleServer:
        server = SimServer()
        register(server)
        health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
        health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
        self.cluster.network.attach(config.listen, self.node, server, contextvars.copy_context())
        role = RoleServer(server, health_servicer, 1, service_name, extra_services)  # type: ignore[arg-type]
        await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
        await role.set_serving(serving)
        return role

    def channel(self, address: str, options: list[tuple[str, Any]] | None) -> Any:
        return self.cluster.network.channel(self.node, address)

    def storage_executor(self, name: str) -> Executor:
        faults = self.cluster.storage_faults
        executor = SimExecutor(
            random.Random(self._rng.random()),
            delay=faults.delay,
            slow_probability=faults.slow_probability,
            slow_delay=faults.slow,
            name=f"{self.node}/{name}",
        )
        self.executors.append(executor)
        return executor

    def rng(self) -> random.Random:
        return random.Random(self._rng.random())


@dataclass
class Node:
    name: str
    kind: str
    index: int
    address: str
    up: bool = False
    runtime: SimRuntime | None = None
    role: RoleServer | None = None
    servicer: Any = None
    closers: list[Callable[[], None]] = field(default_factory=list)
    incarnations: int = 0


@dataclass
class ClusterShape:
    acceptors: int = 3
    proposers: int = 2
    learners: int = 2
    max_resident_instances: int = 30
    #: 0: pages as large as a value may be (the default).
    promise_page_bytes: int = 0
    #: False: every PromiseRange reports from its first instance, as before
    #: the bounded phase 1 (range reads from disk, and their races, again).
    skip_known_chosen: bool = True
    heartbeat_interval: float = 0.1
    election_timeout: float = 0.5
    #: A learner snapshots after this much log; small values make the
    #: compaction point rise and the acceptors truncate all run long.
    retain_log_bytes: int = DEFAULT_RETAIN_LOG_BYTES
    #: The nemesis may wipe a crashed learner's volume (store and snapshot)
    #: when there are others to rebuild it from.
    wipe_learners: bool = False


class SimCluster:
    """The nodes, the network and what they recorded. Use inside a running
    :class:`VirtualEventLoop`."""

    def __init__(
        self,
        seed: int,
        shape: ClusterShape,
        faults: NetFaults,
        storage_faults: StorageFaults,
        directory: Path | None = None,
    ) -> None:
        self.seed = seed
        self.rng = random.Random(seed)
        self.shape = shape
        self.storage_faults = storage_faults
        self.network = SimNetwork(random.Random(self.rng.random()), faults)
        self.recorder = Recorder()
        self._tmp = tempfile.TemporaryDirectory(prefix=f"sim-{seed}-", dir=_fast_tmp())
        self.directory = directory or Path(self._tmp.name)
        self.nodes: dict[str, Node] = {}
        for kind, count in (
            ("acceptor", shape.acceptors),
            ("proposer", shape.proposers),
            ("learner", shape.learners),
        ):
            for i in range(count):
                name = f"{kind}-{i}"
                self.nodes[name] = Node(name, kind, i, f"{name}:7000")
        self.acceptor_addresses = [n.address for n in self.of("acceptor")]
        self.proposer_addresses = [n.address for n in self.of("proposer")]
        self.learner_addresses = [n.address for n in self.of("learner")]

    def of(self, kind: str) -> list[Node]:
        return [n for n in self.nodes.values() if n.kind == kind]

    @property
    def loop(self) -> VirtualEventLoop:
        loop = asyncio.get_running_loop()
        assert isinstance(loop, VirtualEventLoop)
        return loop

    def note(self, text: str) -> None:
        self.recorder.events.append(f"{self.loop.elapsed:9.4f} {text}")

    def context_for(self, node: str) -> tuple[contextvars.Context, SimRuntime]:
        sim_runtime = SimRuntime(self, node)
        ctx = contextvars.Context()
        ctx.run(NODE.set, node)
        ctx.run(runtime.install, sim_runtime)
        return ctx, sim_runtime

    def spawn(self, node: str, coro: Coroutine[Any, Any, Any]) -> asyncio.Task[Any]:
        """Run ``coro`` as a task of ``node`` (clients are nodes too)."""
        ctx, _ = self.context_for(node)
        return self.loop.create_task(coro, context=ctx)

    # Lifecycle -----------------------------------------------------------------

    async def start_all(self) -> None:
        for node in self.nodes.values():
            await self.start(node.name)

    async def start(self, name: str) -> None:
        node = self.nodes[name]
        assert not node.up, name
        ctx, sim_runtime = self.context_for(name)
        node.runtime = sim_runtime
        node.incarnations += 1
        boot = {"acceptor": self._boot_acceptor, "proposer": self._boot_proposer}.get(
            node.kind, self._boot_learner
        )
        task = self.loop.create_task(boot(node), context=ctx)
        await task
        node.up = True
        self.note(f"start {name}")

    async def crash(self, name: str) -> None:
        node = self.nodes[name]
        if not node.up:
            return
        node.up = False
        self.note(f"crash {name}")
        self.network.detach(node.address)
        assert node.runtime is not None
        for executor in node.runtime.executors:
            executor.crash()
        for _ in range(5):
            tasks = self.loop.tasks_of(name)
            if not tasks:
                break
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        for close in node.closers:
            close()
        node.closers.clear()
        node.role = node.servicer = None

    async def wipe(self, name: str) -> None:
        """Crash ``name`` and delete its volume: a learner on a new disk."""
        await self.crash(name)
        for path in sorted(self.directory.glob(f"{name}.db*")):
            path.unlink()
        self.note(f"wipe {name}")

    async def restart(self, name: str) -> None:
        await self.crash(name)
        await self.start(name)

    async def stop_all(self) -> None:
        for node in self.nodes.values():
            await self.crash(node.name)
        self._tmp.cleanup()

    async def _boot_acceptor(self, node: Node) -> None:
        path = self.directory / f"{node.name}.db"
        storage = RecordingStorage(
            path, node.index, self.recorder, self.storage_faults, random.Random(self.rng.random())
        )
        storage.open()
        node.closers.append(storage.close)
        config = AcceptorConfig(
            node_id=node.index,
            listen=node.address,
            db_path=path,
            cluster_id="sim",
            max_resident_instances=self.shape.max_resident_instances,
            promise_page_bytes=self.shape.promise_page_bytes,
            skip_known_chosen=self.shape.skip_known_chosen,
        )
        monitor = self.recorder.monitors.setdefault(
            node.index, AcceptorMonitor(node.index, self.recorder.acceptor_word)
        )
        monitor.restarted()
        node.role, node.servicer = await start_acceptor(config, storage, self.acceptor_addresses)
        _watch_acceptor(node.servicer, monitor)

    async def _boot_proposer(self, node: Node) -> None:
        config = ProposerConfig(
            node_id=node.index,
            listen=node.address,
            acceptors=self.acceptor_addresses,
            learners=self.learner_addresses,
            proposers=self.proposer_addresses,
            propose_timeout=3.0,
            heartbeat_interval=self.shape.heartbeat_interval,
            election_timeout=self.shape.election_timeout,
        )
        node.role, driver, log = await start_proposer(config)
        node.servicer = (driver, log)

    async def _boot_learner(self, node: Node) -> None:
        config = LearnerConfig(
            node_id=node.index,
            listen=node.address,
            acceptors=self.acceptor_addresses,
            proposers=self.proposer_addresses,
            db_path=self.directory / f"{node.name}.db",
            learners=self.learner_addresses,
            retain_log_bytes=self.shape.retain_log_bytes,
        )
        node.role, servicer = await start_learner(config)
        node.servicer = servicer
        replica = servicer.replica
        assert replica is not None
        machine = replica.machine
        node.closers.append(machine.close)
        real_apply = machine.apply_entries
        recorder = self.recorder

        def apply_entries(first: int, entries: Sequence[pb.LogEntry]) -> list[Applied]:
            applied = real_apply(first, entries)
            for item, entry in zip(applied, entries, strict=False):
                recorder.applied.append(
                    AppliedEntry(
                        node.index, item.instance, entry.SerializeToString(), list(item.results)
                    )
                )
            return applied

        machine.apply_entries = apply_entries  # type: ignore[method-assign]


def _fast_tmp() -> str | None:
    """tmpfs when there is one: the files are real, fsync is free."""
    shm = Path("/dev/shm")
    return str(shm) if shm.is_dir() else None


def _watch_acceptor(servicer: Any, monitor: AcceptorMonitor) -> None:
    """Hook the monitor onto one running acceptor (instance attributes only:
    the class and every other acceptor stay as they are)."""
    committer = servicer.committer
    write, write_range = committer.write, committer.write_range_promise

    def queued_write(instance: int, state: AcceptorState) -> Any:
        future = write(instance, state)
        monitor.queue_state(instance, state)
        return future

    def queued_range(promise: RangePromise) -> Any:
        future = write_range(promise)
        monitor.queue_range(promise)
        return future

    committer.write = queued_write
    committer.write_range_promise = queued_range
    acceptor = servicer.acceptor
    on_prepare_range = acceptor.on_prepare_range

    def checked_prepare_range(range_promise: Any, states: Any, msg: Any, **kwargs: Any) -> Any:
        # The read must hold every vote the reply may report.
        known = max(kwargs.get("chosen_through", 0), kwargs.get("compacted_through", 0))
        monitor.range_read(report_start(msg, known), states)
        return on_prepare_range(range_promise, states, msg, **kwargs)

    acceptor.on_prepare_range = checked_prepare_range
