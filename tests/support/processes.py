"""Real role processes for integration and end-to-end tests.

Each node is ``python -m paxos_service ROLE ...`` on a free loopback port with
its log captured to a file. Helpers wait for gRPC health (never a fixed sleep)
and kill by PID, including SIGKILL for crash tests.
"""

from __future__ import annotations

import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

STARTUP_TIMEOUT = 20.0


_handed_out: set[int] = set()


def free_port() -> int:
    """A port free now, never one this process handed out before: the kernel
    may give a just-closed port again, and two nodes listed on one port make
    the servers refuse their --acceptors list ("address listed twice")."""
    while True:
        with socket.socket() as s:
            s.bind(("127.0.0.1", 0))
            port: int = s.getsockname()[1]
        if port not in _handed_out:
            _handed_out.add(port)
            return port


def clean_env() -> dict[str, str]:
    """The test's environment without PAXOS_* settings that could leak in."""
    return {k: v for k, v in os.environ.items() if not k.startswith("PAXOS_")}


def health_status(address: str, service: str = "", timeout: float = 1.0) -> int | None:
    """The health status of ``service`` at ``address``, or None if unreachable."""
    with grpc.insecure_channel(address) as channel:
        try:
            response = health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=service), timeout=timeout
            )
        except grpc.RpcError:
            return None
        status: int = response.status
        return status


def wait_until(predicate: object, timeout: float, what: str, interval: float = 0.05) -> None:
    """Poll ``predicate()`` until true; fail with ``what`` after ``timeout`` s."""
    assert callable(predicate)
    deadline = time.monotonic() + timeout
    while not predicate():
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout}s waiting for {what}")
        time.sleep(interval)


@dataclass
class Node:
    role: str
    node_id: int
    address: str
    argv: list[str]
    log_path: Path
    process: subprocess.Popen[bytes] | None = None
    #: HOST:PORT of its Prometheus /metrics, when the cluster has ``metrics=True``.
    metrics_address: str | None = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> Node:
        with self.log_path.open("ab") as log:
            self.process = subprocess.Popen(
                self.argv,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=clean_env(),
            )
        return self

    def wait_healthy(self, timeout: float = STARTUP_TIMEOUT) -> Node:
        def ready() -> bool:
            assert self.process is not None
            if self.process.poll() is not None:
                raise AssertionError(
                    f"{self.role} {self.node_id} exited with {self.process.returncode}:\n"
                    + self.log()
                )
            return health_status(self.address) == health_pb2.HealthCheckResponse.SERVING

        wait_until(ready, timeout, f"{self.role} {self.node_id} at {self.address} to serve")
        return self

    def kill9(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGKILL)
        self.process.wait(timeout=10)

    def terminate(self, timeout: float = 15) -> int:
        assert self.process is not None
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        return self.process.wait(timeout=timeout)

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def log(self) -> str:
        try:
            return self.log_path.read_text(errors="replace")
        except OSError:
            return ""


@dataclass
class Cluster:
    """Acceptors, proposers and learners as real processes under ``workdir``."""

    workdir: Path
    nodes: list[Node] = field(default_factory=list)
    acceptor_addresses: list[str] = field(default_factory=list)
    #: Give every node ``--metrics-listen`` on a free port (``Node.metrics_address``).
    metrics: bool = False
    #: Flags every node gets (e.g. ``["--max-value-bytes", "4096"]``).
    extra_args: list[str] = field(default_factory=list)

    def node(self, role: str, node_id: int, *args: str, port: int | None = None) -> Node:
        address = f"127.0.0.1:{port or free_port()}"
        metrics_address = f"127.0.0.1:{free_port()}" if self.metrics else None
        metrics_args = ["--metrics-listen", metrics_address] if metrics_address else []
        argv = [
            sys.executable,
            "-m",
            "paxos_service",
            role,
            "--id",
            str(node_id),
            "--listen",
            address,
            "--insecure",
            *args,
            *metrics_args,
            *self.extra_args,
        ]
        log_path = self.workdir / f"{role}-{node_id}-{len(self.nodes)}.log"
        node = Node(role, node_id, address, argv, log_path, metrics_address=metrics_address)
        self.nodes.append(node)
        return node

    def db_path(self, acceptor_id: int) -> Path:
        return self.workdir / f"acceptor-{acceptor_id}.db"

    def start_acceptors(self, count: int) -> list[Node]:
        acceptors = [
            self.node("acceptor", i, "--db", str(self.db_path(i))).start() for i in range(count)
        ]
        self.acceptor_addresses = [a.address for a in acceptors]
        return [a.wait_healthy() for a in acceptors]

    def restart_acceptor(self, old: Node) -> Node:
        port = int(old.address.rsplit(":", 1)[1])
        node = self.node("acceptor", old.node_id, "--db", str(self.db_path(old.node_id)), port=port)
        return node.start().wait_healthy()

    def start_proposer(self, node_id: int, learners: list[Node] | None = None) -> Node:
        args = ["--acceptors", ",".join(self.acceptor_addresses)]
        if learners:
            args += ["--learners", ",".join(n.address for n in learners)]
        return self.node("proposer", node_id, *args).start().wait_healthy()

    def start_learner(self, node_id: int) -> Node:
        args = ["--acceptors", ",".join(self.acceptor_addresses)]
        return self.node("learner", node_id, *args).start().wait_healthy()

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.kill()
                node.process.wait(timeout=10)

    def __iter__(self) -> Iterator[Node]:
        return iter(self.nodes)


@dataclass
class KvCluster:
    """Acceptors, proposers running the replicated log, and KV learners."""

    cluster: Cluster
    acceptors: list[Node]
    proposers: list[Node]
    learners: list[Node]

    @property
    def learner_addresses(self) -> list[str]:
        return [n.address for n in self.learners]

    def leader(self, timeout: float = 15.0) -> Node:
        """The proposer that says it leads (waits for an election)."""
        from paxos_service.v1 import paxos_pb2 as pb
        from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

        found: list[Node] = []

        def elected() -> bool:
            for node in self.proposers:
                if not node.alive():
                    continue
                with grpc.insecure_channel(node.address) as channel:
                    try:
                        reply = pb_grpc.ProposerServiceStub(channel).GetLeader(
                            pb.GetLeaderRequest(), timeout=1
                        )
                    except grpc.RpcError:
                        continue
                if reply.is_leader:
                    found.append(node)
                    return True
            return False

        wait_until(elected, timeout, "a leader to be elected")
        return found[0]

    def restart_learner(self, old: Node) -> Node:
        node = self._again(old)
        self.learners[self.learners.index(old)] = node
        return node.start().wait_healthy()

    def restart_proposer(self, old: Node) -> Node:
        """Start ``old`` (stopped) again with its own command line, as an operator would."""
        node = self._again(old)
        self.proposers[self.proposers.index(old)] = node
        return node.start().wait_healthy()

    def _again(self, old: Node) -> Node:
        port = int(old.address.rsplit(":", 1)[1])
        args = old.argv[old.argv.index("--listen") + 2 : old.argv.index("--insecure")]
        args += old.argv[old.argv.index("--insecure") + 1 :]
        return self.cluster.node(old.role, old.node_id, *args, port=port)


def start_kv_cluster(
    cluster: Cluster, *, proposers: int = 3, learners: int = 2, learner_args: Sequence[str] = ()
) -> KvCluster:
    acceptors = cluster.start_acceptors(3)
    proposer_ports = [free_port() for _ in range(proposers)]
    learner_ports = [free_port() for _ in range(learners)]
    proposer_list = ",".join(f"127.0.0.1:{p}" for p in proposer_ports)
    learner_list = ",".join(f"127.0.0.1:{p}" for p in learner_ports)
    acceptor_list = ",".join(cluster.acceptor_addresses)
    learner_nodes = [
        cluster.node(
            "learner",
            i,
            "--acceptors",
            acceptor_list,
            "--proposers",
            proposer_list,
            "--learners",
            learner_list,
            "--db",
            str(cluster.workdir / f"learner-{i}.db"),
            *learner_args,
            port=port,
        ).start()
        for i, port in enumerate(learner_ports)
    ]
    proposer_nodes = [
        cluster.node(
            "proposer",
            i,
            "--acceptors",
            acceptor_list,
            "--proposers",
            proposer_list,
            "--learners",
            learner_list,
            port=port,
        ).start()
        for i, port in enumerate(proposer_ports)
    ]
    for node in (*learner_nodes, *proposer_nodes):
        node.wait_healthy()
    return KvCluster(cluster, acceptors, proposer_nodes, learner_nodes)


def free_port_range(count: int) -> int:
    """A base port with ``count`` free ports above it, and ``count`` from
    base + 100 (where ``paxos cluster`` puts the nodes' metrics), checked
    free, for a caller that binds them at once."""
    for _ in range(50):
        base = free_port()
        ports = [base + k for k in range(count)] + [base + 100 + k for k in range(count)]
        if base + 100 + count < 65535 and all(_is_free(p) for p in ports):
            return base
    raise AssertionError("no free port range")


def _is_free(port: int) -> bool:
    with socket.socket() as s:
        try:
            s.bind(("127.0.0.1", port))
        except OSError:
            return False
        return True
