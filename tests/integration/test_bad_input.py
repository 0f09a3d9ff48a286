"""Bad input gets a clear status or CLI message: never a traceback or a hang."""

from __future__ import annotations

import subprocess
import sys
import time

import grpc
import pytest

from paxos_service.client.paxos import PaxosClient
from paxos_service.core.errors import InvalidArgumentError, UnavailableError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, clean_env, free_port


@pytest.fixture
def running(cluster: Cluster) -> Cluster:
    cluster.start_acceptors(3)
    learner = cluster.start_learner(0)
    cluster.start_proposer(0, learners=[learner])
    return cluster


def _addr(cluster: Cluster, role: str) -> str:
    return next(n.address for n in cluster if n.role == role)


def _status(call: object) -> tuple[grpc.StatusCode, str]:
    assert callable(call)
    with pytest.raises(grpc.RpcError) as info:
        call()
    return info.value.code(), info.value.details()


def test_proposer_rejects_bad_proposals(running: Cluster) -> None:
    with grpc.insecure_channel(_addr(running, "proposer")) as channel:
        stub = pb_grpc.ProposerServiceStub(channel)
        cases = {
            "value must not be empty": pb.ProposeRequest(instance=1, value=b""),
            "the limit is 1048576 bytes": pb.ProposeRequest(instance=1, value=b"x" * 1048577),
            "instance must be >= 1": pb.ProposeRequest(instance=0, value=b"x"),
            "instance must be <=": pb.ProposeRequest(instance=2**63, value=b"x"),
        }
        for expected, request in cases.items():
            code, details = _status(lambda r=request: stub.Propose(r, timeout=5))
            assert code == grpc.StatusCode.INVALID_ARGUMENT
            assert expected in details


def test_acceptor_rejects_malformed_ballots(running: Cluster) -> None:
    with grpc.insecure_channel(running.acceptor_addresses[0]) as channel:
        stub = pb_grpc.AcceptorServiceStub(channel)
        zero = pb.PrepareRequest(prepare=pb.Prepare(instance=1, ballot=pb.Ballot()))
        missing = pb.AcceptRequest(accept=pb.Accept(instance=1, value=b"v"))
        huge = pb.PrepareRequest(
            prepare=pb.Prepare(instance=1, ballot=pb.Ballot(round=2**64 - 1, proposer_id=1))
        )
        for call, expected in [
            (lambda: stub.Prepare(zero, timeout=5), "round must be >= 1"),
            (lambda: stub.Accept(missing, timeout=5), "ballot is required"),
            (lambda: stub.Prepare(huge, timeout=5), "must be < 2**63"),
            (lambda: stub.GetAccepted(pb.GetAcceptedRequest(instance=0), timeout=5), "instance"),
        ]:
            code, details = _status(call)
            assert code == grpc.StatusCode.INVALID_ARGUMENT, details
            assert expected in details


def test_unknown_instance_reads_as_undecided(running: Cluster) -> None:
    with PaxosClient(learners=[_addr(running, "learner")]) as client:
        assert client.get(424242) is None
        with pytest.raises(InvalidArgumentError):
            client.get(0)


def test_unreachable_quorum_is_unavailable_within_the_deadline(cluster: Cluster) -> None:
    acceptors = cluster.start_acceptors(3)
    proposer = cluster.start_proposer(0)
    acceptors[0].kill9()
    acceptors[1].kill9()
    with PaxosClient(proposers=[proposer.address]) as client:
        started = time.monotonic()
        with pytest.raises(UnavailableError) as info:
            client.propose(1, b"lonely", timeout=2.0)
        elapsed = time.monotonic() - started
    assert "no quorum of acceptors reachable" in str(info.value)
    assert "1 of 3 answered, 2 needed" in str(info.value)
    assert elapsed < 2.0, "the proposer must answer before the client's deadline"


def test_unreachable_proposer_is_a_typed_error(tmp_path: object) -> None:
    with (
        PaxosClient(proposers=[f"127.0.0.1:{free_port()}"]) as client,
        pytest.raises(UnavailableError),
    ):
        client.propose(1, b"v", timeout=2.0)


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "paxos_service", *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=clean_env(),
        check=False,
    )


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["acceptor", "--id", "0", "--listen", "127.0.0.1:1"], "--db is required"),
        (["acceptor", "--id", "zero", "--db", "x.db"], "invalid node id 'zero'"),
        (["proposer", "--id", "1"], "--acceptors is required"),
        (["proposer", "--id", "1", "--acceptors", "localhost"], "invalid address 'localhost'"),
        (["proposer", "--id", "1", "--acceptors", "a:1,a:1"], "address listed twice"),
        (
            ["learner", "--id", "1", "--listen", "host:99999", "--acceptors", "a:1"],
            "invalid address",
        ),
        (["propose", "--proposer", "127.0.0.1:1", "0", "v"], "must be >= 1"),
        (["propose", "1", "v"], "--proposer is required"),
        (["get", "--learner", "127.0.0.1:1", "--timeout", "-1", "1"], "timeout must be > 0"),
        (["cluster", "--acceptors", "0"], "must be >= 1"),
    ],
)
def test_cli_usage_errors_name_the_problem(args: list[str], message: str) -> None:
    result = _cli(*args)
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_cli_reports_unreachable_servers_without_traceback() -> None:
    port = free_port()
    result = _cli("propose", "--proposer", f"127.0.0.1:{port}", "--timeout", "1", "1", "v")
    assert result.returncode == 1
    assert result.stderr.startswith("paxos: error: 127.0.0.1:")
    assert "Traceback" not in result.stderr


def test_second_server_on_a_busy_port_fails_loudly(running: Cluster, tmp_path: object) -> None:
    busy = running.acceptor_addresses[0]
    result = _cli("learner", "--id", "5", "--listen", busy, "--acceptors", busy, "--insecure")
    assert result.returncode == 1
    assert "cannot listen on" in result.stderr
    assert "Traceback" not in result.stderr
