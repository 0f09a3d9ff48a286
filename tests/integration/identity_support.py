"""Shared helpers for the acceptor identity tests on real processes.

Acceptors that know each other (--acceptors) on fixed ports, which can be
wiped and recovered with the real `paxos acceptor recover` command, and
probes that send Prepare, Accept and GetRecoveryInfo and check health.
"""

from __future__ import annotations

import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, Node, clean_env, free_port, health_status

SERVICE = "paxos_service.v1.AcceptorService"
SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING


@dataclass
class Acceptors:
    """Acceptors that know each other (--acceptors), on fixed ports."""

    cluster: Cluster
    ports: list[int]
    nodes: list[Node]

    @property
    def addresses(self) -> list[str]:
        return [f"127.0.0.1:{p}" for p in self.ports]

    @property
    def listed(self) -> str:
        return ",".join(self.addresses)

    def db(self, acceptor_id: int) -> Path:
        return self.cluster.db_path(acceptor_id)

    def start(self, acceptor_id: int, *, db: Path | None = None, port: int | None = None) -> Node:
        node = self.cluster.node(
            "acceptor",
            acceptor_id,
            "--db",
            str(db or self.db(acceptor_id)),
            "--acceptors",
            self.listed,
            port=port or self.ports[acceptor_id],
        )
        if port is None:
            self.nodes[acceptor_id] = node
        return node.start()

    def wipe(self, acceptor_id: int) -> None:
        """The volume is lost: the process dies and its files are gone."""
        self.nodes[acceptor_id].kill9()
        for suffix in ("", "-wal", "-shm"):
            Path(f"{self.db(acceptor_id)}{suffix}").unlink(missing_ok=True)

    def recover(self, acceptor_id: int, settle: float = 0.2) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [
                sys.executable,
                "-m",
                "paxos_service",
                "acceptor",
                "recover",
                "--insecure",
                "--id",
                str(acceptor_id),
                "--db",
                str(self.db(acceptor_id)),
                "--acceptors",
                self.listed,
                "--settle",
                str(settle),
            ],
            capture_output=True,
            text=True,
            timeout=60,
            env=clean_env(),
            check=False,
        )


def start_acceptors(cluster: Cluster, count: int = 3, *, wait: bool = True) -> Acceptors:
    """Start them all together, as a new cluster's acceptors start."""
    ports = [free_port() for _ in range(count)]
    acceptors = Acceptors(cluster, ports, [None] * count)  # type: ignore[list-item]
    for i in range(count):
        acceptors.start(i)
    cluster.acceptor_addresses = acceptors.addresses
    if wait:
        for node in acceptors.nodes:
            node.wait_healthy()
    return acceptors


def alive_but_not_voting(node: Node) -> bool:
    assert node.alive(), node.log()
    return bool(
        health_status(node.address, "liveness") == SERVING
        and health_status(node.address, SERVICE) == NOT_SERVING
        and health_status(node.address, "") == NOT_SERVING
    )


def prepare(address: str, instance: int, round_: int = 2**32) -> pb.PrepareResponse:
    with grpc.insecure_channel(address) as channel:
        request = pb.PrepareRequest(
            prepare=pb.Prepare(instance=instance, ballot=pb.Ballot(round=round_, proposer_id=7)),
            space=pb.INSTANCE_SPACE_LOG,
        )
        response: pb.PrepareResponse = pb_grpc.AcceptorServiceStub(channel).Prepare(
            request, timeout=5
        )
        return response


def accept(address: str, instance: int, round_: int = 2**32) -> pb.AcceptResponse:
    with grpc.insecure_channel(address) as channel:
        ballot = pb.Ballot(round=round_, proposer_id=7)
        request = pb.AcceptRequest(
            accept=pb.Accept(instance=instance, ballot=ballot, value=b"x"),
            space=pb.INSTANCE_SPACE_LOG,
        )
        response: pb.AcceptResponse = pb_grpc.AcceptorServiceStub(channel).Accept(
            request, timeout=5
        )
        return response


def refusal(call: object) -> grpc.RpcError:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as caught:
        call()
    error = caught.value
    assert isinstance(error, grpc.Call)
    assert error.code() is grpc.StatusCode.UNAVAILABLE, error
    return error


def recovery_info(address: str, acceptor_id: int) -> pb.GetRecoveryInfoResponse:
    with grpc.insecure_channel(address) as channel:
        response: pb.GetRecoveryInfoResponse = pb_grpc.AcceptorServiceStub(channel).GetRecoveryInfo(
            pb.GetRecoveryInfoRequest(cluster_id="paxos", acceptor_id=acceptor_id), timeout=5
        )
        return response


def open_storage(path: Path, acceptor_id: int) -> SqliteAcceptorStorage:
    storage = SqliteAcceptorStorage(path, acceptor_id=acceptor_id, cluster_id="paxos")
    storage.open()
    return storage
