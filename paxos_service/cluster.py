"""``paxos cluster``: a whole cluster on this machine, one OS process per role.

It is the quickest way to see Paxos work and fail: kill -9 an acceptor
process and proposals still succeed while a majority lives. Data goes to
``--data-dir`` (SQLite files, and one log file per process under ``logs/``).

Plaintext unless ``--tls``: then every process serves and dials with mutual
TLS, using certificates that ``paxos certs`` makes under ``DATA_DIR/tls`` on
the first run (and reuses afterwards, so clients keep working across runs).
Every node also serves Prometheus metrics over HTTP, on base port + 100 + its
index in the table.
"""

from __future__ import annotations

import os
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

from paxos_service.core.config import TlsFiles
from paxos_service.core.processes import PARENT_ENV, stop_all
from paxos_service.transport import certs
from paxos_service.transport import tls as tls_channels

STARTUP_TIMEOUT = 20.0
STOP_TIMEOUT = 10.0
#: Node i serves metrics on base port + METRICS_OFFSET + i.
METRICS_OFFSET = 100


@dataclass
class Node:
    role: str
    node_id: int
    address: str
    args: list[str]
    log_path: Path
    data: str = ""
    metrics: str = ""
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
        tls: bool = False,
    ) -> None:
        count = acceptors + proposers + learners
        last_port = base_port + METRICS_OFFSET + count - 1
        if last_port > 65535:
            raise ClusterError(
                f"ports {base_port}..{last_port} (gRPC, then metrics from base port + "
                f"{METRICS_OFFSET}) do not fit below 65536"
            )
        self.data_dir = data_dir
        self.log_level = log_level
        self.host = host
        #: The certificates under DATA_DIR/tls (made in start()), or None: plaintext.
        self.tls_dir = data_dir / "tls" if tls else None
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
            args = [
                "--acceptors",
                acceptor_list,
                "--proposers",
                proposer_list,
                "--learners",
                ",".join(learner_addrs),
                "--db",
                str(db),
            ]
            self.nodes.append(Node("learner", i, address, args, logs / f"learner-{i}.log", str(db)))
        for index, node in enumerate(self.nodes):
            node.metrics = f"{host}:{base_port + METRICS_OFFSET + index}"
        self.proposers = proposer_addrs
        self.learners = learner_addrs
        self._stop = threading.Event()

    def files(self, bundle: str) -> TlsFiles | None:
        """The ``peer`` or ``client`` certificate files, or None in plaintext."""
        if self.tls_dir is None:
            return None
        directory = self.tls_dir / bundle
        return TlsFiles(directory / "ca.crt", directory / "tls.crt", directory / "tls.key")

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
        self._ensure_certificates()
        peer = self.files("peer")
        security = (
            ["--insecure"]
            if peer is None
            else [
                "--tls-ca",
                str(peer.ca),
                "--tls-cert",
                str(peer.cert),
                "--tls-key",
                str(peer.key),
            ]
        )
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
                "--metrics-listen",
                node.metrics,
                *security,
                *node.args,
            ]
            with node.log_path.open("ab") as log_file:
                node.process = subprocess.Popen(
                    command,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches us; we stop the children in order
                    # ...and if we are killed, they end too (processes.follow_parent).
                    env={**os.environ, PARENT_ENV: str(os.getpid())},
                )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for node in self.nodes:
            self._wait_healthy(node, deadline)

    def stop(self) -> None:
        stop_all((node.process for node in self.nodes), STOP_TIMEOUT)

    def print_banner(self) -> None:
        client = self.files("client")
        if client is None:
            grpcurl = f"{_grpcurl()} -plaintext"
            cli_tls = ""
        else:
            grpcurl = f"{_grpcurl()} -cacert {client.ca} -cert {client.cert} -key {client.key}"
            cli_tls = f" --tls-ca {client.ca} --tls-cert {client.cert} --tls-key {client.key}"
        print(f"{'ROLE':<9} {'ID':>3}  {'ADDRESS':<21} {'PID':>7}  {'METRICS':<21}  DATA")
        for node in self.nodes:
            pid = node.process.pid if node.process else 0
            print(
                f"{node.role:<9} {node.node_id:>3}  {node.address:<21} {pid:>7}  "
                f"{node.metrics:<21}  {node.data}"
            )
        print(f"\nlogs: {self.data_dir / 'logs'}/")
        if self.tls_dir is None:
            print("plaintext: anyone who can reach these ports can vote (--tls for mutual TLS)")
        else:
            print(f"mutual TLS; certificates: {self.tls_dir}/ (CA, peer, client)")
        print(f"metrics: curl http://{self.nodes[0].metrics}/metrics")
        print("\nPropose 'hello' for instance 1:")
        print(
            f'  {grpcurl} -d \'{{"instance": "1", "value": "aGVsbG8="}}\' '
            f"{self.proposers[0]} paxos_service.v1.ProposerService/Propose"
        )
        print("Read the decision:")
        print(
            f'  {grpcurl} -d \'{{"instance": "1"}}\' '
            f"{self.learners[0]} paxos_service.v1.LearnerService/GetDecision"
        )
        print("Or with the CLI:")
        print(f"  paxos propose{cli_tls} --proposer {','.join(self.proposers)} 1 hello")
        print(f"  paxos get{cli_tls} --learner {','.join(self.learners)} 1")
        print("The key-value store (on the learners):")
        print(
            f'  {grpcurl} -d \'{{"key": "greeting", "value": "aGVsbG8="}}\' '
            f"{self.learners[0]} paxos_service.v1.KvService/Put"
        )
        print(f"  paxos kv{cli_tls} --learners {','.join(self.learners)} put greeting hello")
        print(f"  paxos kv{cli_tls} --learners {','.join(self.learners)} get greeting")
        print("\nCtrl-C stops the cluster.", flush=True)

    # Internals ----------------------------------------------------------

    def _on_signal(self, signum: int, frame: FrameType | None) -> None:
        self._stop.set()

    def _ensure_certificates(self) -> None:
        """Make the certificates with ``paxos certs`` on the first --tls run;
        later runs reuse them, if their peer certificate names our host."""
        if self.tls_dir is None:
            return
        peer = self.tls_dir / "peer" / certs.CERT_FILE
        hosts = [self.host, *(h for h in certs.DEFAULT_HOSTS if h != self.host)]
        if not (self.tls_dir / "ca" / certs.KEY_FILE).exists():
            try:
                certs.generate(self.tls_dir, hosts=[certs.parse_host(h) for h in hosts])
            except (OSError, ValueError) as exc:
                raise ClusterError(f"cannot make certificates in {self.tls_dir}: {exc}") from exc
            return
        try:
            names = certs.hosts_of(certs.load_bundle(self.tls_dir / "peer").cert)
        except (OSError, ValueError) as exc:
            raise ClusterError(
                f"cannot read {peer}: {exc}; delete {self.tls_dir} to make new certificates"
            ) from exc
        if self.host not in names:
            raise ClusterError(
                f"{peer} is not valid for --host {self.host} (only {', '.join(names)}); "
                f"delete {self.tls_dir} to make new certificates"
            )

    def _wait_healthy(self, node: Node, deadline: float) -> None:
        with tls_channels.sync_channel(node.address, self.files("client")) as channel:
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
