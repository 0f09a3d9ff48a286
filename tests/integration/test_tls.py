"""Mutual TLS on real processes: who may talk to a TLS server.

Certificates are made with paxos_service.transport.certs, the code behind `paxos certs`:
one cluster CA with a peer and a client certificate, and three bad ones: an
expired peer certificate from the cluster CA, a peer certificate from another
CA, and no certificate at all. An acceptor refuses all three at the TLS
handshake, and refuses a client certificate at the RPC (PERMISSION_DENIED):
only peers vote. After every refusal the acceptor has promised nothing.
"""

from __future__ import annotations

import datetime as dt
import json
import subprocess
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxos_service.client.grpc_status import error_for
from paxos_service.client.kv import KvClient
from paxos_service.client.paxos import PaxosClient
from paxos_service.core.config import TlsFiles
from paxos_service.core.errors import AuthenticationError, UnavailableError
from paxos_service.transport import certs, tls
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Node, clean_env, free_port, health_status, wait_until

PAXOS = [sys.executable, "-m", "paxos_service"]
GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVING = health_pb2.HealthCheckResponse.SERVING


@dataclass(frozen=True)
class Pki:
    root: Path

    def files(self, name: str) -> TlsFiles:
        d = self.root / name
        return TlsFiles(d / "ca.crt", d / "tls.crt", d / "tls.key")

    def flags(self, name: str) -> list[str]:
        f = self.files(name)
        return ["--tls-ca", str(f.ca), "--tls-cert", str(f.cert), "--tls-key", str(f.key)]

    def grpcurl(self, name: str) -> list[str]:
        f = self.files(name)
        return [str(GRPCURL), "-cacert", str(f.ca), "-cert", str(f.cert), "-key", str(f.key)]


@pytest.fixture(scope="module")
def pki(tmp_path_factory: pytest.TempPathFactory) -> Pki:
    root = tmp_path_factory.mktemp("pki")
    certs.generate(root / "cluster")  # cluster/ca, cluster/peer, cluster/client
    certs.generate(root / "other")  # another CA, and its peer certificate
    ca = certs.load_bundle(root / "cluster" / "ca")
    now = dt.datetime.now(dt.UTC)
    expired = certs.issue(
        ca,
        "expired-peer",
        role=tls.PEER_ROLE,
        hosts=[certs.parse_host("127.0.0.1")],
        not_before=now - dt.timedelta(days=30),
        not_after=now - dt.timedelta(days=1),
    )
    certs.write_bundle(root / "expired", ca.cert, expired)
    # Trusts the cluster CA (so the refusal is the server's), but its own
    # certificate was signed by the other CA.
    certs.write_bundle(root / "foreign", ca.cert, certs.load_bundle(root / "other" / "peer"))
    return Pki(root)


class Nodes:
    """Role processes with TLS; each is killed when the test ends."""

    def __init__(self, workdir: Path, pki: Pki) -> None:
        self.workdir = workdir
        self.pki = pki
        self.nodes: list[Node] = []

    def start(self, role: str, node_id: int, *args: str, port: int | None = None) -> Node:
        address = f"127.0.0.1:{port or free_port()}"
        argv = [*PAXOS, role, "--id", str(node_id), "--listen", address, *args]
        log = self.workdir / f"{role}-{node_id}-{len(self.nodes)}.log"
        node = Node(role, node_id, address, argv, log).start()
        self.nodes.append(node)
        return node

    def start_tls(self, role: str, node_id: int, *args: str, port: int | None = None) -> Node:
        return self.start(role, node_id, *self.pki.flags("cluster/peer"), *args, port=port)

    def wait_serving(self, node: Node) -> Node:
        """Wait for SERVING over mutual TLS, with the client certificate."""
        files = self.pki.files("cluster/client")

        def serving() -> bool:
            assert node.process is not None
            if node.process.poll() is not None:
                raise AssertionError(f"{node.role} exited {node.process.returncode}:\n{node.log()}")
            with tls.sync_channel(node.address, files) as channel:
                try:
                    reply = health_pb2_grpc.HealthStub(channel).Check(
                        health_pb2.HealthCheckRequest(), timeout=1
                    )
                except grpc.RpcError:
                    return False
            return bool(reply.status == SERVING)

        wait_until(serving, 20, f"{node.role} {node.node_id} to serve over TLS")
        return node

    def stop(self) -> None:
        for node in self.nodes:
            if node.alive():
                assert node.process is not None
                node.process.kill()
                node.process.wait(timeout=10)


@pytest.fixture
def nodes(tmp_path: Path, pki: Pki) -> Iterator[Nodes]:
    n = Nodes(tmp_path, pki)
    try:
        yield n
    finally:
        n.stop()


def _prepare(instance: int) -> pb.PrepareRequest:
    ballot = pb.Ballot(round=5, proposer_id=1)
    return pb.PrepareRequest(prepare=pb.Prepare(instance=instance, ballot=ballot))


def _call_prepare(channel: grpc.Channel, instance: int) -> grpc.RpcError:
    with pytest.raises(grpc.RpcError) as info:
        pb_grpc.AcceptorServiceStub(channel).Prepare(_prepare(instance), timeout=5)
    return info.value


def _unchecked_channel(address: str, files: TlsFiles) -> grpc.Channel:
    """A TLS channel with ``files`` as they are: tls.sync_channel would refuse
    an expired certificate before dialling, and we want the server's refusal."""
    credentials = grpc.ssl_channel_credentials(
        files.ca.read_bytes(), files.key.read_bytes(), files.cert.read_bytes()
    )
    return grpc.secure_channel(address, credentials)


def _promised_round(address: str, pki: Pki, instance: int) -> int:
    """What the acceptor promised for ``instance``, asked by a peer."""
    with tls.sync_channel(address, pki.files("cluster/peer")) as channel:
        reply = pb_grpc.AcceptorServiceStub(channel).GetAccepted(
            pb.GetAcceptedRequest(instance=instance), timeout=5
        )
    return int(reply.promised_ballot.round)


def test_acceptor_refuses_callers_without_a_cluster_certificate(
    nodes: Nodes, pki: Pki, tmp_path: Path
) -> None:
    health_port = free_port()
    acceptor = nodes.start_tls(
        "acceptor",
        0,
        "--db",
        str(tmp_path / "a.db"),
        "--health-listen",
        f"127.0.0.1:{health_port}",
    )
    nodes.wait_serving(acceptor)
    ca = pki.files("cluster/client").ca.read_bytes()
    callers: dict[str, grpc.Channel] = {
        "no certificate": grpc.secure_channel(acceptor.address, grpc.ssl_channel_credentials(ca)),
        "plaintext": grpc.insecure_channel(acceptor.address),
        "an expired certificate": _unchecked_channel(acceptor.address, pki.files("expired")),
        "another CA's certificate": _unchecked_channel(acceptor.address, pki.files("foreign")),
    }
    for instance, (who, channel) in enumerate(callers.items(), start=1):
        with channel:
            error = _call_prepare(channel, instance)
        assert isinstance(error, grpc.Call)
        # grpc refuses these at the handshake, so the call never reaches the
        # server: the status is UNAVAILABLE, and the client stubs name it.
        assert error.code() == grpc.StatusCode.UNAVAILABLE, (who, error.details())
        refusal = tls.describe_refusal(error.code(), error.details() or "", tls=who != "plaintext")
        assert refusal is not None, (who, error.details())
        assert ("refused this client's certificate" in refusal) or ("requires TLS" in refusal)
        assert isinstance(
            error_for(error.code(), error.details() or "", "x", tls=who != "plaintext"),
            UnavailableError if who == "plaintext" else AuthenticationError,
        )
        assert _promised_round(acceptor.address, pki, instance) == 0, f"{who} got a promise"

    # Kubernetes' probes cannot do TLS: --health-listen serves health alone,
    # in plaintext, and nothing else.
    health = f"127.0.0.1:{health_port}"
    assert health_status(health, "paxos_service.v1.AcceptorService") == SERVING
    with grpc.insecure_channel(health) as channel:
        error = _call_prepare(channel, 9)
    assert isinstance(error, grpc.Call) and error.code() == grpc.StatusCode.UNIMPLEMENTED
    assert _promised_round(acceptor.address, pki, 9) == 0


def test_only_peer_certificates_may_vote(nodes: Nodes, pki: Pki, tmp_path: Path) -> None:
    acceptor = nodes.wait_serving(nodes.start_tls("acceptor", 0, "--db", str(tmp_path / "a.db")))
    # A client certificate from the cluster CA gets through the handshake,
    # but may not vote.
    with tls.sync_channel(acceptor.address, pki.files("cluster/client")) as channel:
        error = _call_prepare(channel, 1)
        assert isinstance(error, grpc.Call)
        assert error.code() == grpc.StatusCode.PERMISSION_DENIED, error.details()
        assert "AcceptorService/Prepare is for cluster peers only" in (error.details() or "")
        assert "OU=client" in (error.details() or "")
        # Health and reflection take any certificate the CA signed.
        reply = health_pb2_grpc.HealthStub(channel).Check(health_pb2.HealthCheckRequest())
        assert reply.status == SERVING
    assert _promised_round(acceptor.address, pki, 1) == 0

    # The same with grpcurl.
    denied = subprocess.run(
        [
            *pki.grpcurl("cluster/client"),
            "-d",
            '{"prepare": {"instance": "2", "ballot": {"round": "5"}}}',
            acceptor.address,
            "paxos_service.v1.AcceptorService/Prepare",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert denied.returncode != 0 and "PermissionDenied" in denied.stderr, denied.stderr

    # A peer certificate votes.
    with tls.sync_channel(acceptor.address, pki.files("cluster/peer")) as channel:
        reply = pb_grpc.AcceptorServiceStub(channel).Prepare(_prepare(1), timeout=5)
    assert reply.WhichOneof("outcome") == "promise"
    assert _promised_round(acceptor.address, pki, 1) == 5


def test_a_tls_cluster_serves_clients_with_client_certificates(
    nodes: Nodes, pki: Pki, tmp_path: Path
) -> None:
    acceptors = [
        nodes.start_tls("acceptor", i, "--db", str(tmp_path / f"acceptor-{i}.db")) for i in range(3)
    ]
    acceptor_list = ",".join(a.address for a in acceptors)
    proposer_port, learner_port = free_port(), free_port()
    proposer_address = f"127.0.0.1:{proposer_port}"
    learner_address = f"127.0.0.1:{learner_port}"
    learner = nodes.start_tls(
        "learner",
        0,
        *("--acceptors", acceptor_list, "--proposers", proposer_address),
        *("--db", str(tmp_path / "learner.db")),
        port=learner_port,
    )
    proposer = nodes.start_tls(
        "proposer",
        0,
        *("--acceptors", acceptor_list, "--proposers", proposer_address),
        *("--learners", learner_address),
        port=proposer_port,
    )
    for node in (*acceptors, learner, proposer):
        nodes.wait_serving(node)

    client = pki.files("cluster/client")
    with KvClient([learner.address], tls=client, timeout=20) as kv:
        assert kv.put("greeting", b"hello").revision >= 1
        found = kv.get("greeting")
        assert found is not None and found.value == b"hello"

    # The real grpcurl, with the client certificate, as the banner of
    # `paxos cluster --tls` and docs/security.md show it.
    proposed = subprocess.run(
        [
            *pki.grpcurl("cluster/client"),
            "-d",
            '{"instance": "1000", "value": "aGVsbG8="}',
            proposer.address,
            "paxos_service.v1.ProposerService/Propose",
        ],
        capture_output=True,
        text=True,
        timeout=30,
        check=False,
    )
    assert proposed.returncode == 0, proposed.stderr
    assert json.loads(proposed.stdout)["value"] == "aGVsbG8="
    with PaxosClient(learners=[learner.address], tls=client) as paxos:
        assert paxos.get(1000) == b"hello"

    # Clients that are refused get one clear error, not a timeout or a traceback.
    with (
        KvClient([learner.address], tls=pki.files("foreign"), timeout=20) as kv,
        pytest.raises(AuthenticationError, match="refused this client's certificate"),
    ):
        kv.get("greeting")
    with (
        KvClient([learner.address], tls=pki.files("other/peer"), timeout=20) as kv,
        pytest.raises(AuthenticationError, match="refused the server's certificate"),
    ):
        kv.get("greeting")
    # Plaintext against TLS: a hang-up, which may be a refusal or a dropped
    # connection, so UNAVAILABLE (retried until the deadline) with a hint.
    with (
        PaxosClient(proposers=[proposer.address]) as paxos,
        pytest.raises(UnavailableError, match="if it requires TLS, give --tls-ca"),
    ):
        paxos.propose(1001, b"x")
    plain = subprocess.run(
        [*PAXOS, "kv", "--learners", learner.address, "--timeout", "1", "get", "greeting"],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )
    assert plain.returncode == 1
    assert "requires TLS" in plain.stderr and "Traceback" not in plain.stderr


def test_plaintext_is_explicit_and_logs_a_warning(nodes: Nodes, tmp_path: Path) -> None:
    acceptor = nodes.start("acceptor", 0, "--db", str(tmp_path / "a.db"), "--insecure")
    wait_until(
        lambda: health_status(acceptor.address) == SERVING, 20, "the plaintext acceptor to serve"
    )
    assert "serving plaintext without TLS" in acceptor.log()


def test_tls_mistakes_are_one_line_errors(pki: Pki, tmp_path: Path) -> None:
    listen = ["--id", "0", "--listen", f"127.0.0.1:{free_port()}", "--db", str(tmp_path / "a.db")]
    peer = pki.files("cluster/peer")
    cases: list[tuple[list[str], int, str]] = [
        # Neither TLS nor --insecure: refuses, naming both ways out.
        (["acceptor", *listen], 2, "TLS is required: give --tls-ca, --tls-cert and --tls-key"),
        # Half the TLS flags, for a server and for each client command.
        (
            ["acceptor", *listen, "--tls-ca", str(peer.ca)],
            2,
            "missing --tls-cert, --tls-key",
        ),
        (["kv", "--tls-cert", str(peer.cert), "get", "k"], 2, "missing --tls-ca, --tls-key"),
        (
            ["propose", "--proposer", "127.0.0.1:1", "--tls-key", str(peer.key), "1", "v"],
            2,
            "missing --tls-ca, --tls-cert",
        ),
        (["get", "--learner", "127.0.0.1:1", "--tls-ca", str(peer.ca), "1"], 2, "missing"),
        (
            ["acceptor", *listen, *pki.flags("cluster/peer"), "--insecure"],
            2,
            "mutually exclusive",
        ),
        # Files that cannot work: a server refuses to start, saying why.
        (
            ["acceptor", *listen, *pki.flags("cluster/client")],
            1,
            "is not a peer certificate",
        ),
        (["acceptor", *listen, *pki.flags("expired")], 1, "is valid only from"),
        (
            [
                "acceptor",
                *listen,
                *("--tls-ca", str(peer.ca), "--tls-cert", str(peer.cert)),
                *("--tls-key", str(pki.files("cluster/client").key)),
            ],
            1,
            "is not the key of --tls-cert",
        ),
        (
            ["kv", *pki.flags("cluster/client"), "--tls-ca", str(tmp_path / "no.crt"), "get", "k"],
            2,
            "cannot read --tls-ca",
        ),
    ]
    # Independent processes: run them side by side, each acceptor on its own
    # file (two creating one file at once saw it "exists but is empty").
    db = str(tmp_path / "a.db")
    running = [
        subprocess.Popen(
            [*PAXOS, *(str(tmp_path / f"a{i}.db") if arg == db else arg for arg in argv)],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env=clean_env(),
        )
        for i, (argv, _, _) in enumerate(cases)
    ]
    for (argv, code, expected), process in zip(cases, running, strict=True):
        _, stderr = process.communicate(timeout=60)
        result = subprocess.CompletedProcess(argv, process.returncode, "", stderr)
        assert result.returncode == code, (argv, result.stderr)
        assert expected in result.stderr, (argv, result.stderr)
        assert "Traceback" not in result.stderr, result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("paxos"), result.stderr
