"""One chaos run, start to finish: build, load, break, heal, observe, judge, report.

1. Build the network and start 3 acceptors, 3 proposers (the replicated log)
   and 2 learners (KV replicas), each in its own namespace
   (:mod:`paxos_testing.chaos.harness`); wait until a write succeeds.
2. Run the clients (:mod:`~paxos_testing.chaos.workload`) and the nemesis
   (:mod:`~paxos_testing.chaos.nemesis`) for ``duration`` seconds.
3. Heal everything, write once more, read every key, wait for the learners to
   catch up, and collect what the checkers need: the learners' states, the
   acceptors' accepted proposals, and every process's exit and log.
4. Tear the cluster down (always, also on errors and Ctrl-C), then judge
   (:mod:`~paxos_testing.chaos.checkers`) and report
   (:mod:`~paxos_testing.chaos.report`).
"""

from __future__ import annotations

import asyncio
import random
import signal
import time
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path
from types import FrameType
from typing import Any

import grpc

from paxos_service.client.grpc_status import trailing
from paxos_service.client.kv import AsyncKvClient
from paxos_service.transport.metadata import COMPACTED_THROUGH_METADATA
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from paxos_testing.chaos import checkers, report, timeline
from paxos_testing.chaos.harness import Harness
from paxos_testing.chaos.host import HarnessError, ensure_tools, require_root, sweep_dead_runs
from paxos_testing.chaos.nemesis import Clock, Nemesis, health
from paxos_testing.chaos.nodes import BROKEN_ACCEPTOR_MODULE
from paxos_testing.chaos.schedule import CLOCK_KINDS, FAULT_KINDS, plan_schedule
from paxos_testing.chaos.workload import FINAL_READER, KEY_PREFIX, Workload
from paxos_testing.linearizability import history_to_jsonl

#: How long the cluster gets to come up, and to settle after the final heal.
STARTUP_TIMEOUT = 60.0
SETTLE_TIMEOUT = 60.0


@dataclass
class RunConfig:
    seed: int
    duration: float
    out: Path
    clients: int = 4
    keys: int = 4
    op_timeout: float = 3.0
    fault_seconds: tuple[float, float] = (3.0, 5.0)
    heal_seconds: tuple[float, float] = (3.0, 5.0)
    kinds: Sequence[str] = FAULT_KINDS
    linearizability_budget: float = 300.0
    #: The exact command that replays this run (printed and saved).
    replay: str = ""
    progress: bool = True
    #: Test only: a broken-acceptor mode (paxos_testing/broken_acceptor.py) for
    #: the first ``broken_acceptors`` acceptors (None: all). Such a run should fail.
    broken_acceptor: str | None = None
    broken_acceptors: int | None = None
    #: The learners' --retain-log-bytes (None: the servers' default).
    retain_log_bytes: int | None = None


@dataclass
class Outcome:
    summary: dict[str, Any]
    result: checkers.Result
    table: str
    files: dict[str, str] = field(default_factory=dict)


def _raise_interrupt(signum: int, frame: FrameType | None) -> None:
    raise KeyboardInterrupt(f"signal {signum}")


def run_chaos(config: RunConfig) -> Outcome:
    """Run it; raises HarnessError if the harness itself cannot (no root, ...)."""
    require_root()
    notes: list[str] = []
    ensure_tools(notes)
    leftovers = sweep_dead_runs()
    if leftovers:
        notes.append(f"removed what a dead earlier run left behind: {', '.join(leftovers)}")
    config.out.mkdir(parents=True, exist_ok=True)
    harness = Harness(
        config.out,
        fake_clocks=any(k in CLOCK_KINDS for k in config.kinds),
        broken_acceptor=config.broken_acceptor,
        broken_acceptors=config.broken_acceptors,
        retain_log_bytes=config.retain_log_bytes,
    )
    harness.plan()
    broken = sorted(n.name for n in harness.nodes.values() if n.broken_mode is not None)
    if broken:
        notes.append(
            f"TEST ONLY: {', '.join(broken)} ran deliberately broken "
            f"(python -m {BROKEN_ACCEPTOR_MODULE} --mode {config.broken_acceptor}): "
            "a violation is expected"
        )
    previous = signal.signal(signal.SIGTERM, _raise_interrupt)
    say = _progress(config.progress)
    if broken:
        say(f"WARNING: {notes[-1]}")
    try:
        say(f"building {len(harness.nodes)} namespaces ({harness.prefix}-*) and starting nodes")
        harness.create()
        harness.start_all()
        harness.enter_hub()
        collected = asyncio.run(_drive(harness, config, notes, say))
    finally:
        try:
            harness.close()
        finally:
            signal.signal(signal.SIGTERM, previous)
    say("cluster torn down; checking")
    return _judge_and_report(config, collected, notes, say, broken)


def _progress(enabled: bool) -> Any:
    start = time.monotonic()

    def say(text: str) -> None:
        if enabled:
            print(f"[chaos {time.monotonic() - start:6.1f}s] {text}", flush=True)

    return say


@dataclass
class _Collected:
    workload: Workload
    nemesis: Nemesis
    clock: Clock
    end: float
    learners: list[checkers.LearnerState]
    acceptors: list[checkers.AcceptorState]
    processes: list[checkers.ProcessRecord]
    storage_faults: list[checkers.StorageFault]


async def _drive(harness: Harness, config: RunConfig, notes: list[str], say: Any) -> _Collected:
    learners = [n.address for n in harness.nodes.values() if n.role == "learner"]
    await _wait_serving(harness)
    clock = Clock()
    workload = Workload(
        learners,
        clock,
        config.seed,
        clients=config.clients,
        keys=config.keys,
        op_timeout=config.op_timeout,
    )
    if not await _barrier(workload, STARTUP_TIMEOUT):
        raise HarnessError("the cluster never accepted a first write:\n" + _log_tails(harness))
    schedule = plan_schedule(
        config.seed,
        config.duration,
        sorted(harness.nodes),
        fault_seconds=config.fault_seconds,
        heal_seconds=config.heal_seconds,
        kinds=config.kinds,
    )
    say(f"cluster serving; {len(schedule)} faults planned over {config.duration:g}s")
    nemesis = Nemesis(harness, random.Random(config.seed), clock)
    stop = asyncio.Event()
    clients = asyncio.create_task(workload.run(stop))
    faults = asyncio.create_task(nemesis.run(schedule, stop))
    try:
        reported = 0
        while clock() < config.duration and not clients.done():
            await asyncio.sleep(min(1.0, max(0.0, config.duration - clock())))
            while reported < len(nemesis.log):
                say(nemesis.log[reported].strip())
                reported += 1
        stop.set()
        await faults
        await clients  # raises if a client crashed: a harness bug, not a finding
    finally:
        stop.set()
        for task in (clients, faults):
            task.cancel()
        await asyncio.gather(clients, faults, return_exceptions=True)
        await nemesis.heal_all()
    end = clock()
    say(f"load stopped after {end:.1f}s with {len(workload.history)} operations; healing")
    if not await _barrier(workload, SETTLE_TIMEOUT):
        notes.append("no write succeeded within 60 s of the final heal")
    if not await workload.final_reads():
        notes.append("some final reads did not succeed")
    learner_states = await _settled_learner_states(harness, notes)
    acceptor_states = await asyncio.gather(
        *(
            _acceptor_state(n.name, n.address)
            for n in harness.nodes.values()
            if n.role == "acceptor"
        )
    )
    storage_faults = [
        checkers.StorageFault(
            r.planned.index, r.kind, r.targets[0], r.incarnation, r.saw_not_serving
        )
        for r in nemesis.records
        if r.kind in ("fsync", "disk-full") and r.incarnation is not None
    ]
    processes = _process_records(harness, {(f.node, f.start) for f in storage_faults})
    return _Collected(
        workload,
        nemesis,
        clock,
        end,
        learner_states,
        list(acceptor_states),
        processes,
        storage_faults,
    )


async def _wait_serving(harness: Harness) -> None:
    deadline = time.monotonic() + STARTUP_TIMEOUT
    for node in harness.nodes.values():
        while await health(node) != 1:  # SERVING
            if not node.alive():
                raise HarnessError(f"{node.name} exited at startup:\n{_log_tails(harness)}")
            if time.monotonic() > deadline:
                raise HarnessError(f"{node.name} never served:\n{_log_tails(harness)}")
            await asyncio.sleep(0.1)


async def _barrier(workload: Workload, timeout: float) -> bool:
    """Write until one write succeeds (each attempt is part of the history)."""
    deadline = time.monotonic() + timeout
    async with AsyncKvClient(list(workload.learners), timeout=workload.op_timeout) as kv:
        n = 0
        while time.monotonic() < deadline:
            n += 1
            op = await workload.put(
                kv,
                FINAL_READER,
                f"{KEY_PREFIX}barrier",
                f"barrier-{workload.clock():.3f}-{n}".encode(),
            )
            if op.status == "ok":
                return True
            await asyncio.sleep(0.2)
    return False


async def _settled_learner_states(
    harness: Harness, notes: list[str]
) -> list[checkers.LearnerState]:
    """Wait until every learner has applied the same instance with no lag,
    twice in a row; then read each one's whole state (stale Range)."""
    learners = [n for n in harness.nodes.values() if n.role == "learner"]
    deadline = time.monotonic() + SETTLE_TIMEOUT
    previous: list[tuple[int, int] | None] = []
    while time.monotonic() < deadline:
        marks = await asyncio.gather(*(_applied(n.address) for n in learners))
        if (
            all(m is not None and m[1] == 0 for m in marks)
            and len({m[0] for m in marks if m is not None}) == 1
            and marks == previous
        ):
            break
        previous = marks
        await asyncio.sleep(0.5)
    else:
        notes.append(f"learners had not converged {SETTLE_TIMEOUT:g}s after the final heal")
    return list(await asyncio.gather(*(_learner_state(n.name, n.address) for n in learners)))


async def _applied(address: str) -> tuple[int, int] | None:
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            reply = await pb_grpc.KvServiceStub(channel).Get(
                pb.GetRequest(key=f"{KEY_PREFIX}barrier", stale=True), timeout=2
            )
    except grpc.RpcError:
        return None
    return int(reply.applied_instance), int(reply.lag_instances)


async def _learner_state(name: str, address: str) -> checkers.LearnerState:
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.KvServiceStub(channel)
            got = await stub.Get(pb.GetRequest(key=f"{KEY_PREFIX}barrier", stale=True), timeout=5)
            reply = await stub.Range(pb.RangeRequest(prefix=KEY_PREFIX, stale=True), timeout=5)
    except grpc.RpcError as exc:
        return checkers.LearnerState(name, None, None, error=f"{exc.code()}: {exc.details()}")
    keys = tuple(
        checkers.KeyState(k.key, k.value, k.version, k.create_revision, k.mod_revision)
        for k in reply.kvs
    )
    return checkers.LearnerState(name, int(reply.revision), int(got.applied_instance), keys)


async def _acceptor_state(name: str, address: str) -> checkers.AcceptorState:
    """Every vote the acceptor holds: from just above its compaction point
    (below it, the votes are deleted and the learners' agreement is the check)."""
    entries: list[checkers.AcceptedEntry] = []
    start = 1
    try:
        async with grpc.aio.insecure_channel(address) as channel:
            stub = pb_grpc.AcceptorServiceStub(channel)
            while True:
                try:
                    reply = await stub.GetAcceptedRange(
                        pb.GetAcceptedRangeRequest(from_instance=start, limit=1000), timeout=10
                    )
                except grpc.aio.AioRpcError as exc:
                    point = trailing(exc, COMPACTED_THROUGH_METADATA)
                    if exc.code() != grpc.StatusCode.OUT_OF_RANGE or not point:
                        raise
                    start = int(point) + 1
                    continue
                if not reply.accepted:
                    break
                for a in reply.accepted:
                    ballot = (int(a.ballot.round), int(a.ballot.proposer_id))
                    entries.append(checkers.AcceptedEntry(int(a.instance), ballot, a.value))
                start = int(reply.accepted[-1].instance) + 1
    except grpc.RpcError as exc:
        return checkers.AcceptorState(name, tuple(entries), f"{exc.code()}: {exc.details()}")
    return checkers.AcceptorState(name, tuple(entries))


def _process_records(
    harness: Harness, storage_targets: set[tuple[str, int | None]]
) -> list[checkers.ProcessRecord]:
    records = []
    for node in harness.nodes.values():
        harness.reap(node)
        for inc in node.incarnations:
            try:
                text = inc.log.read_text(errors="replace")
            except OSError:
                text = ""
            tracebacks, critical, stopped = checkers.scan_log(text)
            records.append(
                checkers.ProcessRecord(
                    node=node.name,
                    start=inc.start,
                    exit_code=inc.exit_code,
                    killed_by_nemesis=inc.killed,
                    storage_target=(node.name, inc.start) in storage_targets,
                    tracebacks=tracebacks,
                    critical_lines=critical,
                    stopped_voting=stopped,
                )
            )
    return records


def _log_tails(harness: Harness, lines: int = 15) -> str:
    out = []
    for node in harness.nodes.values():
        try:
            text = node.log_path.read_text(errors="replace")
        except OSError:
            text = ""
        out.append(f"== {node.name} ==\n" + "\n".join(text.splitlines()[-lines:]))
    return "\n".join(out)


def _judge_and_report(
    config: RunConfig, c: _Collected, notes: list[str], say: Any, broken: Sequence[str] = ()
) -> Outcome:
    history = c.workload.history
    obs = checkers.Observations(
        history=history,
        learners=c.learners,
        acceptors=c.acceptors,
        processes=c.processes,
        storage_faults=c.storage_faults,
        linearizability_budget=config.linearizability_budget,
    )
    started = time.monotonic()
    result = checkers.judge(obs)
    notes.append(f"checkers took {time.monotonic() - started:.1f}s")
    gaps = report.availability(c.nemesis.records, history, c.end)
    summary = report.summarize(
        report.RunInfo(
            seed=config.seed, duration=config.duration, elapsed=c.clock(), replay=config.replay
        ),
        history=history,
        records=c.nemesis.records,
        result=result,
        errors=c.workload.errors,
        gaps=gaps,
        notes=notes,
    )
    if broken:
        summary["broken_acceptor"] = {"mode": config.broken_acceptor, "acceptors": list(broken)}
    out = config.out
    files = {
        "history": str(out / "history.jsonl"),
        "summary": str(out / "summary.json"),
        "nemesis": str(out / "nemesis.log"),
        "logs": str(out / "logs"),
    }
    history_to_jsonl(history, out / "history.jsonl")
    (out / "nemesis.log").write_text("\n".join(c.nemesis.log) + "\n")
    png = out / "timeline.png"
    made = timeline.write_timeline(png, history, c.nemesis.records, c.end)
    if made is None:
        files["timeline"] = str(png)
    else:
        notes.append(made)
    summary["files"] = files
    report.write_json(summary, out / "summary.json")
    table = report.format_table(summary)
    (out / "summary.txt").write_text(table + "\n")
    return Outcome(summary, result, table, files)
