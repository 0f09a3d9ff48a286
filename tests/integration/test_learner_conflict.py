"""A learner that is shown two values chosen for one instance says so:
one critical log line naming both, the metric
``paxos_learner_conflicts_total``, and health NOT_SERVING for good.

A real learner process (``paxos learner``, no --db), told by two Decides that
two different values were chosen for instance 1, as two proposers of a broken
cluster would tell it.
"""

from __future__ import annotations

import json
import urllib.request

import grpc
from grpc_health.v1 import health_pb2

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, free_port, health_status

SERVING = health_pb2.HealthCheckResponse.SERVING
NOT_SERVING = health_pb2.HealthCheckResponse.NOT_SERVING
LEARNER_SERVICE = "paxos_service.v1.LearnerService"


def decide(address: str, instance: int, round_: int, value: bytes) -> grpc.StatusCode:
    request = pb.DecideRequest(
        decide=pb.Decide(
            instance=instance, ballot=pb.Ballot(round=round_, proposer_id=1), value=value
        )
    )
    with grpc.insecure_channel(address) as channel:
        try:
            pb_grpc.LearnerServiceStub(channel).Decide(request, timeout=5)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            return exc.code()
    return grpc.StatusCode.OK


def conflicts_total(metrics_address: str) -> float:
    with urllib.request.urlopen(f"http://{metrics_address}/metrics", timeout=5) as response:
        text = response.read().decode()
    return sum(
        float(line.rsplit(" ", 1)[1])
        for line in text.splitlines()
        if line.startswith("paxos_learner_conflicts_total{")
    )


def test_a_learner_told_two_values_for_one_instance_stops_serving(cluster: Cluster) -> None:
    """On the old code the second Decide got INTERNAL and a critical line, but
    the learner stayed SERVING (and had no conflicts metric): the health
    assertions after the second Decide failed."""
    cluster.metrics = True
    # The learner only dials acceptors for instances it was not told about.
    cluster.acceptor_addresses = [f"127.0.0.1:{free_port()}" for _ in range(3)]
    learner = cluster.start_learner(0)
    assert learner.metrics_address is not None
    assert decide(learner.address, 1, 1, b"v") is grpc.StatusCode.OK
    assert decide(learner.address, 1, 2, b"v") is grpc.StatusCode.OK  # agrees: fine
    assert health_status(learner.address) == SERVING
    assert conflicts_total(learner.metrics_address) == 0

    # The reply comes after health and the log line: no waiting needed.
    assert decide(learner.address, 1, 3, b"w") is grpc.StatusCode.INTERNAL
    assert health_status(learner.address) == NOT_SERVING
    assert health_status(learner.address, LEARNER_SERVICE) == NOT_SERVING
    assert conflicts_total(learner.metrics_address) == 1
    critical = [
        json.loads(line)
        for line in learner.log().splitlines()
        if line.startswith("{") and '"level": "critical"' in line
    ]
    assert len(critical) == 1, learner.log()
    line = critical[0]
    assert "two values chosen for one instance" in line["event"]
    assert line["instance"] == 1
    assert "b'v'" in line["error"] and "b'w'" in line["error"]
    assert line["shown_by"] == "decide"

    # It stays that way, and answers for that instance with the violation,
    # not with either value.
    with grpc.insecure_channel(learner.address) as channel:
        stub = pb_grpc.LearnerServiceStub(channel)
        try:
            stub.GetDecision(pb.GetDecisionRequest(instance=1), timeout=5)
        except grpc.RpcError as exc:
            assert isinstance(exc, grpc.Call)
            assert exc.code() is grpc.StatusCode.INTERNAL
            assert "safety violation" in str(exc.details())
        else:
            raise AssertionError("GetDecision answered for a contested instance")
    assert health_status(learner.address) == NOT_SERVING
