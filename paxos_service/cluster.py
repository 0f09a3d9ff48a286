"""``paxos cluster``: a whole cluster on this machine, one OS process per role.

It is the quickest way to see Paxos work and fail: kill -9 an acceptor
process and proposals still succeed while a majority lives. Data goes to
``--data-dir`` (SQLite files, and one log file per process under ``logs/``).
"""

from __future__ import annotations

import shutil
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from types import FrameType

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxos_service.processes import stop_all

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0


@dataclass
class Node:
    role: str
    node_id: int
    address: str
    args: list[str]
    log_path: Path
    data: str = ""
    process: subprocess.Popen[bytes] | None = None
    reported_exit: bool = False


class ClusterError(RuntimeError):
    pass


class LocalCluster:
    def __init__(
        self,
        *,
        acceptors: int,
        proposers: int,
        learners: int,
        data_dir: Path,
        base_port: int,
        host: str = "127.0.0.1",
        log_level: str = "info",
    ) -> None:
        last_port = base_port + acceptors + proposers + learners - 1
        if last_port > 65535:
            raise ClusterError(f"ports {base_port}..{last_port} do not fit below 65536")
        self.data_dir = data_dir
        self.log_level = log_level
        ports = iter(range(base_port, last_port + 1))
        acceptor_addrs = [f"{host}:{next(ports)}" for _ in range(acceptors)]
        proposer_addrs = [f"{host}:{next(ports)}" for _ in range(proposers)]
        learner_addrs = [f"{host}:{next(ports)}" for _ in range(learners)]
        logs = data_dir / "logs"
        self.nodes: list[Node] = []
        acceptor_list, proposer_list = ",".join(acceptor_addrs), ",".join(proposer_addrs)
        for i, address in enumerate(acceptor_addrs):
            db = data_dir / f"acceptor-{i}.db"
            # Acceptors know each other, so one whose file is lost does not vote
            # as its old self (identity safety). They all start together, so a
            # new cluster's acceptors vouch for each other and vote at once.
            args = ["--db", str(db), "--acceptors", acceptor_list]
            self.nodes.append(
                Node("acceptor", i, address, args, logs / f"acceptor-{i}.log", str(db))
            )
        for i, address in enumerate(proposer_addrs):
            args = [
                "--acceptors",
                acceptor_list,
                "--learners",
                ",".join(learner_addrs),
                "--proposers",
                proposer_list,
            ]
            self.nodes.append(Node("proposer", i, address, args, logs / f"proposer-{i}.log"))
        for i, address in enumerate(learner_addrs):
            db = data_dir / f"learner-{i}.db"
            args = ["--acceptors", acceptor_list, "--proposers", proposer_list, "--db", str(db)]
            self.nodes.append(Node("learner", i, address, args, logs / f"learner-{i}.log", str(db)))
        self.proposers = proposer_addrs
        self.learners = learner_addrs
        self._stop = threading.Event()

    def run(self) -> int:
        """Start everything, print how to use it, and supervise until a signal."""
        for sig in (signal.SIGINT, signal.SIGTERM):
            signal.signal(sig, self._on_signal)
        try:
            self.start()
        except ClusterError as exc:
            print(f"paxos: error: {exc}", file=sys.stderr)
            self.stop()
            return 1
        self.print_banner()
        while not self._stop.wait(0.5):
            self._report_exits()
        self._report_exits()  # a death since the last poll is news too
        print("\nstopping the cluster ...", flush=True)
        self.stop()
        print("stopped.", flush=True)
        return 0

    def start(self) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        for node in self.nodes:
            command = [
                sys.executable,
                "-m",
                "paxos_service",
                node.role,
                "--id",
                str(node.node_id),
                "--listen",
                node.address,
                "--log-level",
                self.log_level,
                *node.args,
            ]
            with node.log_path.open("ab") as log_file:
                node.process = subprocess.Popen(
                    command,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
                )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for node in self.nodes:
            self._wait_healthy(node, deadline)

    def stop(self) -> None:
        stop_all((node.process for node in self.nodes), STOP_TIMEOUT)

    def print_banner(self) -> None:
        grpcurl = _grpcurl()
        print(f"{'ROLE':<9} {'ID':>3}  {'ADDRESS':<21} {'PID':>7}  DATA")
        for node in self.nodes:
            pid = node.process.pid if node.process else 0
            print(f"{node.role:<9} {node.node_id:>3}  {node.address:<21} {pid:>7}  {node.data}")
        print(f"\nlogs: {self.data_dir / 'logs'}/")
        print("\nPropose 'hello' for instance 1:")
        print(
            f'  {grpcurl} -plaintext -d \'{{"instance": "1", "value": "aGVsbG8="}}\' '
            f"{self.proposers[0]} paxos_service.v1.ProposerService/Propose"
        )
        print("Read the decision:")
        print(
            f'  {grpcurl} -plaintext -d \'{{"instance": "1"}}\' '
            f"{self.learners[0]} paxos_service.v1.LearnerService/GetDecision"
        )
        print("Or with the CLI:")
        print(f"  paxos propose --proposer {','.join(self.proposers)} 1 hello")
        print(f"  paxos get --learner {','.join(self.learners)} 1")
        print("The key-value store (on the learners):")
        print(
            f'  {grpcurl} -plaintext -d \'{{"key": "greeting", "value": "aGVsbG8="}}\' '
            f"{self.learners[0]} paxos_service.v1.KvService/Put"
        )
        print(f"  paxos kv --learners {','.join(self.learners)} put greeting hello")
        print(f"  paxos kv --learners {','.join(self.learners)} get greeting")
        print("\nCtrl-C stops the cluster.", flush=True)

    # Internals ----------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _wait_healthy(self, node: Node, deadline: float) -> None:
        with grpc.insecure_channel(node.address) as channel:
            stub = health_pb2_grpc.HealthStub(channel)
            while True:
                assert node.process is not None
                if node.process.poll() is not None:
                    raise ClusterError(
                        f"{node.role} {node.node_id} exited with code {node.process.returncode} "
                        f"while starting:\n{_tail(node.log_path)}"
                    )
                if self._stop.is_set():
                    raise ClusterError("interrupted while starting")
                try:
                    response = stub.Check(health_pb2.HealthCheckRequest(service=""), timeout=0.5)
                    if response.status == health_pb2.HealthCheckResponse.SERVING:
                        return
                except grpc.RpcError:
                    pass
                if time.monotonic() > deadline:
                    raise ClusterError(
                        f"{node.role} {node.node_id} at {node.address} not healthy after "
                        f"{STARTUP_TIMEOUT}s:\n{_tail(node.log_path)}"
                    )
                time.sleep(0.05)

    def _report_exits(self) -> None:
        for node in self.nodes:
            if node.process is None or node.reported_exit:
                continue
            code = node.process.poll()
            if code is not None:
                node.reported_exit = True
                print(
                    f"{node.role} {node.node_id} ({node.address}) exited with code {code}; "
                    f"see {node.log_path}",
                    flush=True,
                )


def _grpcurl() -> str:
    if shutil.which("grpcurl"):
        return "grpcurl"
    candidate = Path(sys.prefix) / "bin" / "grpcurl"
    if candidate.exists():
        try:
            return str(candidate.relative_to(Path.cwd()))
        except ValueError:
            return str(candidate)
    return "grpcurl"


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])
