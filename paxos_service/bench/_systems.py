"""The systems under test: the paxos cluster and, with ``--compare etcd``, a
3-member etcd. Each is started on free ports with its data in the benchmark's
temp dir, and stopped by PID; what its processes cost is read from /proc."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path

from paxos_service.bench import _proc
from paxos_service.bench._errors import BenchError
from paxos_service.bench._etcd import EtcdCluster, EtcdUnavailable
from paxos_service.bench._loadgen import key_name
from paxos_service.bench._ports import free_port_block
from paxos_service.client.kv import KvClient
from paxos_service.cluster import ClusterError, LocalCluster
from paxos_service.core.errors import PaxosError


@dataclass
class System:
    """One system under test, as the load generator and the reports see it."""

    name: str
    endpoints: tuple[str, ...]
    pids: dict[str, int]
    data_dir: Path
    stop: Callable[[], None]
    #: Requests completed (warm-up and prefill included), by operation.
    completed: dict[str, int] = field(default_factory=dict)
    #: The last log instance applied (paxos only): instances per run tell how
    #: many commands share one instance (batching).
    log_position: Callable[[], int | None] | None = None


def start_paxos(args: argparse.Namespace, data_dir: Path, systems: list[System]) -> System:
    """Start the paxos cluster (3 acceptors, 2 proposers, 1 learner). It joins
    ``systems`` before it starts, so that stopping them all stops a
    half-started cluster too."""
    data_dir.mkdir(parents=True)
    cluster = LocalCluster(
        acceptors=3,
        proposers=2,
        learners=1,
        data_dir=data_dir,
        base_port=free_port_block(6),
        log_level=args.log_level,
    )
    system = System("paxos", tuple(cluster.learners), {}, data_dir, cluster.stop)
    systems.append(system)
    try:
        cluster.start()
    except ClusterError as exc:
        raise BenchError(f"the paxos cluster did not start: {exc}") from None
    system.pids = {
        f"{node.role}-{node.node_id}": node.process.pid
        for node in cluster.nodes
        if node.process is not None
    }
    probe = KvClient(list(system.endpoints), timeout=args.timeout)
    previous_stop = system.stop

    def stop() -> None:
        probe.close()
        previous_stop()

    def log_position() -> int | None:
        try:
            return probe.get_detailed(key_name(0), stale=True).applied_instance
        except PaxosError:
            return None

    system.stop, system.log_position = stop, log_position
    return system


def start_etcd(binary: str, data_dir: Path, systems: list[System]) -> System:
    """Start a 3-member etcd; it joins ``systems`` first, as in :func:`start_paxos`."""
    cluster = EtcdCluster(binary, data_dir, base_port=free_port_block(6))
    system = System("etcd", tuple(cluster.endpoints), {}, data_dir, cluster.stop)
    systems.append(system)
    try:
        cluster.start()
    except EtcdUnavailable as exc:
        raise BenchError(f"etcd did not start: {exc}") from None
    system.pids = cluster.pids()
    return system


def cpu(pids: dict[str, int]) -> dict[str, float | None]:
    """CPU seconds each process has used so far (None: gone)."""
    return {name: _proc.cpu_seconds(pid) for name, pid in pids.items()}


def cpu_delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    """CPU seconds used between two :func:`cpu` readings (0 for a process gone)."""
    out = {}
    for name, start in before.items():
        end = after.get(name)
        out[name] = end - start if start is not None and end is not None else 0.0
    return out


def rss(pids: dict[str, int]) -> dict[str, int]:
    """Resident memory of each process now, in bytes (0: gone)."""
    return {name: _proc.rss_bytes(pid) or 0 for name, pid in pids.items()}


def update_peak(peak: dict[str, int], now: dict[str, int]) -> None:
    """Raise each process's peak in ``peak`` to what ``now`` says, if higher."""
    for name, value in now.items():
        peak[name] = max(peak.get(name, 0), value)
