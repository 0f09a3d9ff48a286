"""``OperatorService`` with the real grpcurl, as docs/operations.md shows it:
found by reflection on every role, ExplainInstance and GetNodeStatus callable
without proto files, bad input answered with INVALID_ARGUMENT."""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Cluster, Node

GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICE = "paxos_service.v1.OperatorService"


def grpcurl(
    address: str, *args: str, data: dict[str, object] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [str(GRPCURL), "-plaintext", "-max-time", "20"]
    if data is not None:
        argv += ["-d", json.dumps(data)]
    return subprocess.run(
        [*argv, address, *args], capture_output=True, text=True, timeout=60, check=False
    )


@pytest.fixture
def nodes(tmp_path: Path) -> Iterator[tuple[list[Node], Node, Node]]:
    cluster = Cluster(tmp_path)
    try:
        acceptors = cluster.start_acceptors(3)
        learner = cluster.start_learner(0)
        proposer = cluster.start_proposer(0, learners=[learner])
        yield acceptors, proposer, learner
    finally:
        cluster.stop()


def test_explain_instance_and_node_status_with_grpcurl(
    nodes: tuple[list[Node], Node, Node],
) -> None:
    acceptors, proposer, learner = nodes
    for node in (acceptors[0], proposer, learner):
        listed = grpcurl(node.address, "list")
        assert listed.returncode == 0, listed.stderr
        assert SERVICE in listed.stdout.split()
        status = grpcurl(node.address, f"{SERVICE}/GetNodeStatus", data={})
        assert status.returncode == 0, status.stderr
        assert json.loads(status.stdout)["role"] == f"NODE_ROLE_{node.role.upper()}"

    proposed = grpcurl(
        proposer.address,
        "paxos_service.v1.ProposerService/Propose",
        data={"instance": "1", "value": "aGVsbG8="},
    )
    assert proposed.returncode == 0, proposed.stderr

    explained = grpcurl(proposer.address, f"{SERVICE}/ExplainInstance", data={"instance": "1"})
    assert explained.returncode == 0, explained.stderr
    answer = json.loads(explained.stdout)
    assert answer["verdict"] == "INSTANCE_VERDICT_CHOSEN"
    assert answer["summary"].startswith("chosen: 'hello' at ballot")
    assert answer["chosen_value"]["value"] == "aGVsbG8="
    # JSON leaves zero values out: acceptor 0 has no acceptor_id field.
    assert [a.get("acceptor_id", "0") for a in answer["acceptors"]] == ["0", "1", "2"]
    assert all(a["accepted_value"]["value"] == "aGVsbG8=" for a in answer["acceptors"])

    for instance, message in (
        ("0", "instance must be >= 1"),
        ("9223372036854775808", "instance must be <= 9223372036854775807"),
    ):
        bad = grpcurl(proposer.address, f"{SERVICE}/ExplainInstance", data={"instance": instance})
        assert bad.returncode != 0
        assert "InvalidArgument" in bad.stderr
        assert message in bad.stderr
