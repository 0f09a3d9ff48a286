"""One seeded run: start the cluster, load it while the nemesis works, heal,
check that every client finishes, stop, and run every checker.

Everything random comes from the seed: the cluster shape within bounds, the
network and storage faults, the schedule of crashes and partitions, the
clients' operations and the service's own randomness (through the runtime).
``make sim`` fixes ``PYTHONHASHSEED=0`` as well, so that string hashing
cannot reorder anything that reaches the network.
"""

from __future__ import annotations

import asyncio
import logging
import random
from dataclasses import dataclass, field

import structlog

from paxos_service.core.config import DEFAULT_RETAIN_LOG_BYTES
from tests.simulation.realsim import checkers
from tests.simulation.realsim.cluster import ClusterShape, SimCluster, StorageFaults
from tests.simulation.realsim.net import NetFaults
from tests.simulation.realsim.vloop import SimError, run_virtual
from tests.simulation.realsim.workload import History, KvClient, Nemesis, ProposeClient

#: Virtual seconds of load with faults, then of load after the heal.
ACTIVE = 6.0
#: Virtual seconds every client gets, after the heal, to finish one write.
LIVENESS_BOUND = 20.0


@dataclass
class RunResult:
    seed: int
    violations: dict[str, list[str]] = field(default_factory=dict)
    ops: int = 0
    ok: int = 0
    applied_instances: int = 0
    votes: int = 0
    events: list[str] = field(default_factory=list)
    description: str = ""

    @property
    def failed(self) -> bool:
        return any(self.violations.values())

    def report(self) -> str:
        lines = [f"seed {self.seed}: {self.description}"]
        for name, problems in self.violations.items():
            for problem in problems[:10]:
                lines.append(f"  {name}: {problem}")
        lines.append(f"  replay: make sim SEED={self.seed}")
        lines.append("  schedule:")
        lines.extend(f"    {e}" for e in self.events[-60:])
        return "\n".join(lines)


def draw(seed: int) -> tuple[ClusterShape, NetFaults, StorageFaults, int]:
    rng = random.Random(f"shape-{seed}")
    phase1 = random.Random(f"page-{seed}")
    compaction = random.Random(f"compact-{seed}")
    shape = ClusterShape(
        acceptors=rng.choice((3, 3, 5)),
        proposers=rng.choice((1, 2, 2, 3)),
        learners=rng.choice((1, 2, 2)),
        max_resident_instances=rng.choice((2, 4, 8, 30, 20_000)),
        # Their own stream, so that the other draws of a seed stay as they were.
        promise_page_bytes=phase1.choice((0, 0, 100, 400)),
        skip_known_chosen=phase1.choice((True, False)),
        retain_log_bytes=compaction.choice((DEFAULT_RETAIN_LOG_BYTES, 30, 100, 400)),
        wipe_learners=compaction.choice((False, True)),
    )
    faults = NetFaults(
        drop_probability=rng.choice((0.0, 0.01, 0.05)),
        duplicate_probability=rng.choice((0.0, 0.02)),
        min_delay=0.0002,
        max_delay=rng.choice((0.002, 0.01)),
        long_delay_probability=rng.choice((0.0, 0.01)),
        connect_timeout=2.0,
        never_duplicate=("/paxos_service.v1.KvService/",),
    )
    storage = StorageFaults(
        commit_failure=rng.choice((0.0, 0.0, 0.002)),
        delay=(0.0002, rng.choice((0.002, 0.01))),
        slow_probability=rng.choice((0.0, 0.02)),
    )
    clients = rng.choice((2, 3))
    return shape, faults, storage, clients


def run_seed(seed: int, *, max_real_seconds: float = 120.0) -> RunResult:
    saved = structlog.get_config()
    _quiet_logs()
    try:
        return _run_seed(seed, max_real_seconds)
    finally:
        structlog.configure(**saved)


def _run_seed(seed: int, max_real_seconds: float) -> RunResult:
    shape, faults, storage, clients = draw(seed)
    result = RunResult(
        seed,
        description=(
            f"{shape.acceptors} acceptors, {shape.proposers} proposers, {shape.learners} "
            f"learners, memory window {shape.max_resident_instances}, promise pages "
            f"{shape.promise_page_bytes or 'full'}"
            f"{'' if shape.skip_known_chosen else ' from the first instance'}, "
            f"snapshots every {shape.retain_log_bytes} B"
            f"{', learner wipes' if shape.wipe_learners else ''}, {clients} clients, "
            f"drop {faults.drop_probability}, duplicate {faults.duplicate_probability}, "
            f"fsync failure {storage.commit_failure}, slow storage {storage.slow_probability}"
        ),
    )
    history = History()

    async def main() -> SimCluster:
        cluster = SimCluster(seed, shape, NetFaults(connect_timeout=2.0), storage)
        await cluster.start_all()
        cluster.network.faults = faults
        loop = asyncio.get_running_loop()
        until = loop.time() + ACTIVE
        kv = [KvClient(cluster, i + 1, history) for i in range(clients)]
        proposer = ProposeClient(cluster)
        nemesis = Nemesis(cluster)
        work = [cluster.spawn(c.name, c.run(until)) for c in kv]
        work.append(cluster.spawn("client-propose", proposer.run(until)))
        await nemesis.run(until)
        await nemesis.stop()
        await asyncio.gather(*work)
        # Heal: no more faults; every node up; every client must finish a write.
        cluster.note("heal all")
        cluster.network.heal()
        cluster.network.faults = NetFaults(connect_timeout=2.0)
        cluster.storage_faults.commit_failure = 0.0
        for node in cluster.nodes.values():
            stopped_voting = (
                node.kind == "acceptor"
                and node.servicer is not None
                and node.servicer.committer.failure is not None
            )
            if stopped_voting:
                await cluster.crash(node.name)
            if not node.up:
                await cluster.start(node.name)
        final = [
            cluster.spawn(c.name, c.one("put", budget=LIVENESS_BOUND, persist=True)) for c in kv
        ]
        for client, record in zip(kv, await asyncio.gather(*final), strict=True):
            if record.op.status != "ok":
                history.stuck.append(
                    f"client {client.client_id}: a put after the heal did not complete in "
                    f"{LIVENESS_BOUND} s ({record.op.status}: {record.last_error})"
                )
        await cluster.stop_all()
        return cluster

    try:
        cluster = run_virtual(main, max_virtual_seconds=600.0, max_real_seconds=max_real_seconds)
    except SimError as exc:
        # A busy loop, a deadlock or a run that never ends is a finding too.
        result.violations = {"stuck": [f"{type(exc).__name__}: {exc}"[:2000]]}
        return result
    recorder = cluster.recorder
    n = shape.acceptors
    result.events = recorder.events
    result.ops = len(history.ops)
    result.ok = sum(1 for op in history.ops if op.op.status == "ok")
    result.votes = len(recorder.votes)
    result.applied_instances = len({a.instance for a in recorder.applied})
    result.violations = {
        "acceptor-word": recorder.acceptor_word,
        "agreement": checkers.check_agreement(recorder, n),
        "learners": checkers.check_learners(recorder, n),
        "single-decree": checkers.check_proposals(recorder, n),
        "linearizable": checkers.check_linearizable(history),
        "answers-true": checkers.check_answers_true(recorder, history),
        "exactly-once": checkers.check_exactly_once(recorder),
        "liveness": history.stuck,
        "servicer-errors": [str(e) for e in cluster.network.unexpected_errors],
    }
    return result


def _quiet_logs() -> None:
    """Warnings and errors only: thousands of runs would print millions of lines."""
    structlog.configure(
        processors=[_drop],
        wrapper_class=structlog.make_filtering_bound_logger(logging.CRITICAL),
        cache_logger_on_first_use=False,
    )


def _drop(_logger: object, _name: str, _event: object) -> object:
    raise structlog.DropEvent
