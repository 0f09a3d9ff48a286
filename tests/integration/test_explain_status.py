"""``ExplainInstance`` and ``paxos status`` on real processes.

ExplainInstance is checked against the ground truth: what each acceptor's
SQLite file holds once the acceptors are stopped. ``paxos status`` runs as a
subprocess, the way an operator runs it, against a real cluster in which an
acceptor is then killed with SIGKILL.
"""

from __future__ import annotations

import json
import signal
import sqlite3
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from paxos_service.core import log_entry
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, KvCluster, clean_env, free_port, start_kv_cluster

PAXOS = [sys.executable, "-m", "paxos_service"]
MAX_INSTANCE = 2**63 - 1
LOG = pb.INSTANCE_SPACE_LOG


# Helpers ---------------------------------------------------------------------------


def explain(address: str, instance: int, **fields: object) -> pb.ExplainInstanceResponse:
    with grpc.insecure_channel(address) as channel:
        reply: pb.ExplainInstanceResponse = pb_grpc.OperatorServiceStub(channel).ExplainInstance(
            pb.ExplainInstanceRequest(instance=instance, **fields),  # type: ignore[arg-type]
            timeout=10,
        )
        return reply


def node_status(address: str) -> pb.GetNodeStatusResponse:
    with grpc.insecure_channel(address) as channel:
        reply: pb.GetNodeStatusResponse = pb_grpc.OperatorServiceStub(channel).GetNodeStatus(
            pb.GetNodeStatusRequest(), timeout=10
        )
        return reply


def get_leader(address: str) -> pb.GetLeaderResponse | None:
    with grpc.insecure_channel(address) as channel:
        try:
            reply: pb.GetLeaderResponse = pb_grpc.ProposerServiceStub(channel).GetLeader(
                pb.GetLeaderRequest(), timeout=5
            )
        except grpc.RpcError:
            return None
        return reply


def paxos(*args: str, timeout: float = 60) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*PAXOS, *args], capture_output=True, text=True, timeout=timeout, env=clean_env()
    )


def put(learner: str, key: str, value: bytes, sequence: int, timeout: float = 20.0) -> int:
    """A KV put through ``learner``, retried with the same request id while no
    leader is known yet (exactly-once makes that safe)."""
    request = pb.PutRequest(
        key=key, value=value, request_id=pb.RequestId(client_id=7, sequence=sequence)
    )
    deadline = time.monotonic() + timeout
    with grpc.insecure_channel(learner) as channel:
        stub = pb_grpc.KvServiceStub(channel)
        while True:
            try:
                reply: pb.PutResponse = stub.Put(request, timeout=5)
                return reply.revision
            except grpc.RpcError as exc:
                retryable = exc.code() in (grpc.StatusCode.UNAVAILABLE, grpc.StatusCode.ABORTED)  # type: ignore[attr-defined]
                if not retryable or time.monotonic() > deadline:
                    raise


@dataclass(frozen=True)
class Row:
    promised: tuple[int, int]
    accepted: tuple[int, int]
    value: bytes | None


@dataclass(frozen=True)
class Stored:
    """An acceptor's SQLite file, read directly."""

    rows: dict[int, Row]
    range_promise: tuple[int, tuple[int, int]] | None  # (from_instance, ballot)


def read_acceptor_file(path: Path) -> Stored:
    with sqlite3.connect(path) as db:
        rows = {
            r[0]: Row((r[1], r[2]), (r[3], r[4]), r[5])
            for r in db.execute(
                "SELECT instance, promised_round, promised_proposer_id, accepted_round, "
                "accepted_proposer_id, accepted_value FROM acceptor_state"
            )
        }
        found = db.execute(
            "SELECT from_instance, promised_round, promised_proposer_id FROM range_promise"
        ).fetchone()
    db.close()
    range_promise = None if found is None else (found[0], (found[1], found[2]))
    return Stored(rows, range_promise)


def ballot(msg: pb.Ballot) -> tuple[int, int]:
    return (msg.round, msg.proposer_id)


def assert_matches_storage(
    instance: int,
    entry: pb.AcceptorInstanceState,
    stored: Stored,
    acceptor_id: int,
    *,
    log: bool = False,
) -> None:
    """Every field ExplainInstance reports for one acceptor equals its file
    (where single-decree instance k is row -k, apart from the log's)."""
    where = f"instance {instance}, acceptor {acceptor_id}"
    assert entry.reachable, where
    assert entry.acceptor_id == acceptor_id, where
    row = stored.rows.get(instance if log else -instance, Row((0, 0), (0, 0), None))
    assert ballot(entry.instance_promised_ballot) == row.promised, where
    assert entry.HasField("instance_promised_ballot") == (row.promised != (0, 0)), where
    assert ballot(entry.accepted_ballot) == row.accepted, where
    assert entry.HasField("accepted_ballot") == (row.value is not None), where
    if row.value is None:
        assert not entry.HasField("accepted_value"), where
    else:
        assert entry.accepted_value.value == row.value, where
        assert entry.accepted_value.size == len(row.value), where
        assert not entry.accepted_value.truncated, where
    covering = stored.range_promise is not None and stored.range_promise[0] <= instance
    assert entry.HasField("range_promised_ballot") == covering, where
    floor = (0, 0)
    if covering:
        assert stored.range_promise is not None
        floor = stored.range_promise[1]
        assert ballot(entry.range_promised_ballot) == floor, where
        assert entry.range_from_instance == stored.range_promise[0], where
    assert ballot(entry.promised_ballot) == max(row.promised, floor), where


def raw_prepare(address: str, instance: int, round_: int, proposer_id: int) -> None:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.AcceptorServiceStub(channel).Prepare(
            pb.PrepareRequest(
                prepare=pb.Prepare(
                    instance=instance, ballot=pb.Ballot(round=round_, proposer_id=proposer_id)
                )
            ),
            timeout=5,
        )
    assert reply.HasField("promise")


def raw_accept(address: str, instance: int, round_: int, proposer_id: int, value: bytes) -> None:
    with grpc.insecure_channel(address) as channel:
        reply = pb_grpc.AcceptorServiceStub(channel).Accept(
            pb.AcceptRequest(
                accept=pb.Accept(
                    instance=instance,
                    ballot=pb.Ballot(round=round_, proposer_id=proposer_id),
                    value=value,
                )
            ),
            timeout=5,
        )
    assert reply.HasField("accepted")


def table_rows(output: str) -> dict[tuple[str, int], list[str]]:
    """``paxos status`` rows by (role, id): the cells split on 2+ spaces."""
    import re

    rows = {}
    for line in output.splitlines():
        cells = re.split(r"\s{2,}", line.strip())
        if cells and cells[0] in ("acceptor", "proposer", "learner"):
            rows[(cells[0], int(cells[1]))] = cells
    return rows


# ExplainInstance -------------------------------------------------------------------


def test_explain_matches_the_acceptors_stored_state(cluster: Cluster) -> None:
    acceptors = cluster.start_acceptors(3)
    learner = cluster.start_learner(0)
    proposer = cluster.start_proposer(0, learners=[learner])
    with grpc.insecure_channel(proposer.address) as channel:
        stub = pb_grpc.ProposerServiceStub(channel)
        for instance, value in ((1, b"alpha"), (2, b"beta")):
            reply = stub.Propose(pb.ProposeRequest(instance=instance, value=value), timeout=20)
            assert reply.value == value
    # Instance 3: a proposer got promises from a majority, then its Accept
    # reached acceptor 0 only before it crashed.
    for a in acceptors[:2]:
        raw_prepare(a.address, 3, 5, 7)
    raw_accept(acceptors[0].address, 3, 5, 7, b"lonely")
    # Instance 4: a proposer crashed between the phases.
    for a in acceptors[1:]:
        raw_prepare(a.address, 4, 2, 9)
    # The learner learns 1 and 2 (GetDecision asks the acceptors if the
    # proposer's Decide has not arrived yet), so its view is settled.
    with grpc.insecure_channel(learner.address) as channel:
        lstub = pb_grpc.LearnerServiceStub(channel)
        for instance in (1, 2):
            assert lstub.GetDecision(pb.GetDecisionRequest(instance=instance), timeout=10).decided

    answers = {i: explain(proposer.address, i) for i in range(1, 6)}
    for instance in (1, 2):
        answer = answers[instance]
        value = {1: b"alpha", 2: b"beta"}[instance]
        assert answer.verdict == pb.INSTANCE_VERDICT_CHOSEN, answer.summary
        assert answer.summary.startswith("chosen:")
        assert answer.chosen_value.value == value
        assert answer.quorum == 2
        assert answer.answered_by_role == pb.NODE_ROLE_PROPOSER
        assert [a.acceptor_id for a in answer.acceptors] == [0, 1, 2]
        assert [a.address for a in answer.acceptors] == cluster.acceptor_addresses
        assert [(lr.address, lr.decided, lr.value.value) for lr in answer.learners] == [
            (learner.address, True, value)
        ]
    stuck = answers[3]
    assert stuck.verdict == pb.INSTANCE_VERDICT_STUCK, stuck.summary
    assert stuck.summary.startswith("stuck:")
    assert "acceptor 0 accepted 'lonely' at ballot 5.7" in stuck.summary
    assert "acceptors 1, 2 accepted nothing" in stuck.summary
    assert [a.HasField("accepted_ballot") for a in stuck.acceptors] == [True, False, False]
    assert not stuck.learners[0].decided
    promised_only = answers[4]
    assert promised_only.verdict == pb.INSTANCE_VERDICT_EMPTY
    assert promised_only.summary.startswith("no acceptor accepted anything")
    assert "promised ballot 2.9" in promised_only.summary
    untouched = answers[5]
    assert untouched.verdict == pb.INSTANCE_VERDICT_EMPTY
    assert "nothing was proposed" in untouched.summary

    # A learner explains from the same acceptors, so it sees the same states.
    for instance, answer in answers.items():
        from_learner = explain(learner.address, instance)
        assert from_learner.answered_by_role == pb.NODE_ROLE_LEARNER
        assert list(from_learner.acceptors) == list(answer.acceptors)
        assert from_learner.verdict == answer.verdict
    # An acceptor answers for itself only.
    own = explain(acceptors[0].address, 3)
    assert own.verdict == pb.INSTANCE_VERDICT_UNSPECIFIED
    assert list(own.acceptors) == [stuck.acceptors[0]]
    assert own.summary.startswith("acceptor 0 alone: promised 5.7, accepted 'lonely'")
    # Values are cut to value_limit, and size and digest still describe them whole.
    cut = explain(proposer.address, 1, value_limit=2)
    assert cut.acceptors[0].accepted_value.value == b"al"
    assert cut.acceptors[0].accepted_value.truncated
    assert cut.acceptors[0].accepted_value.size == 5
    assert cut.acceptors[0].accepted_value.sha256 == answers[1].acceptors[0].accepted_value.sha256

    # Bad input: a clear INVALID_ARGUMENT naming the field, from every role.
    for address in (proposer.address, learner.address, acceptors[0].address):
        for bad, message in (
            (0, "instance must be >= 1"),
            (MAX_INSTANCE + 1, "instance must be <="),
        ):
            with pytest.raises(grpc.RpcError) as caught:
                explain(address, bad)
            assert caught.value.code() is grpc.StatusCode.INVALID_ARGUMENT  # type: ignore[attr-defined]
            assert message in caught.value.details()  # type: ignore[attr-defined]

    # Two acceptors die: too few answer to tell, and the answer says why.
    for a in acceptors[1:]:
        a.kill9()
    unknown = explain(proposer.address, 3)
    assert unknown.verdict == pb.INSTANCE_VERDICT_UNKNOWN, unknown.summary
    assert unknown.summary.startswith("unknown: only 1 of 3 acceptors answered")
    assert [a.reachable for a in unknown.acceptors] == [True, False, False]
    assert all("connection refused" in a.error for a in unknown.acceptors[1:])
    assert unknown.acceptors[0] == stuck.acceptors[0]

    # The ground truth: the files, once every acceptor has stopped.
    acceptors[0].terminate()
    for acceptor_id in range(3):
        stored = read_acceptor_file(cluster.db_path(acceptor_id))
        for instance, answer in answers.items():
            assert_matches_storage(instance, answer.acceptors[acceptor_id], stored, acceptor_id)


@pytest.fixture
def kv_cluster(cluster: Cluster) -> Iterator[KvCluster]:
    yield start_kv_cluster(cluster, proposers=2, learners=1)


def test_explain_log_instances_matches_storage_and_the_learner(
    cluster: Cluster, kv_cluster: KvCluster
) -> None:
    kv_cluster.leader()
    learner = kv_cluster.learners[0]
    for i in range(4):
        put(learner.address, f"key-{i}", f"value-{i}".encode(), sequence=i + 1)
    # Nothing may change the acceptors while we compare: stop the proposers.
    for p in kv_cluster.proposers:
        p.kill9()
    highest = max(
        node_status(a.address).acceptor.highest_accepted_instance for a in kv_cluster.acceptors
    )
    applied = node_status(learner.address).learner.applied_instance
    assert highest >= 4 and applied >= 4
    answers = {i: explain(learner.address, i, space=LOG) for i in range(1, highest + 2)}
    for instance in range(1, highest + 1):
        answer = answers[instance]
        assert answer.verdict == pb.INSTANCE_VERDICT_CHOSEN, answer.summary
        assert answer.chosen_value.value.startswith(log_entry.MAGIC)
        assert "log " in answer.summary  # described as a log entry or no-op, not bytes
        (me,) = answer.learners
        assert me.kv_enabled and me.applied == (instance <= applied)
    beyond = answers[highest + 1]
    assert beyond.verdict == pb.INSTANCE_VERDICT_EMPTY, beyond.summary
    assert "to the log leader for every instance from" in beyond.summary

    for a in kv_cluster.acceptors:
        a.terminate()
    for acceptor_id in range(3):
        stored = read_acceptor_file(cluster.db_path(acceptor_id))
        assert stored.range_promise is not None  # the leader's PrepareRange
        for instance, answer in answers.items():
            entry = answer.acceptors[acceptor_id]
            assert_matches_storage(instance, entry, stored, acceptor_id, log=True)


# paxos status ----------------------------------------------------------------------


def _addresses(kv: KvCluster) -> list[str]:
    return [
        "--acceptors",
        ",".join(a.address for a in kv.acceptors),
        "--proposers",
        ",".join(p.address for p in kv.proposers),
        "--learners",
        ",".join(kv.learner_addresses),
    ]


def _stable_leader(kv: KvCluster) -> tuple[pb.GetLeaderResponse, subprocess.CompletedProcess[str]]:
    """Run ``paxos status --json`` between two identical GetLeader answers, so
    that the leader it shows is the one GetLeader reports (an election in
    between, rare on a busy machine, just means trying again)."""
    leader_node = kv.leader()
    for _ in range(20):
        before = get_leader(leader_node.address)
        result = paxos("status", "--json", *_addresses(kv))
        after = get_leader(leader_node.address)
        if before is not None and before == after and before.is_leader:
            return before, result
        leader_node = kv.leader()
    raise AssertionError("the leader kept changing")


def test_status_shows_every_node_and_a_killed_acceptor_as_down(kv_cluster: KvCluster) -> None:
    kv = kv_cluster
    put(kv.learner_addresses[0], "status", b"up", sequence=1)
    leader, as_json = _stable_leader(kv)
    assert as_json.returncode == 0, as_json.stdout + as_json.stderr
    report = json.loads(as_json.stdout)
    assert report["healthy"] is True
    assert [(n["role"], n["id"], n["health"]) for n in report["nodes"]] == [
        ("acceptor", 0, "SERVING"),
        ("acceptor", 1, "SERVING"),
        ("acceptor", 2, "SERVING"),
        ("proposer", 0, "SERVING"),
        ("proposer", 1, "SERVING"),
        ("learner", 0, "SERVING"),
    ]
    assert report["leader"]["id"] == leader.leader_id
    assert report["leader"]["address"] == leader.leader_address
    leader_row = next(
        n for n in report["nodes"] if n["role"] == "proposer" and n["leader"] == "self"
    )
    assert leader_row["id"] == leader.leader_id

    table = paxos("status", *_addresses(kv))
    assert table.returncode == 0, table.stdout + table.stderr
    rows = table_rows(table.stdout)
    assert table.stdout.splitlines()[0].split() == [
        "ROLE", "ID", "ADDRESS", "HEALTH", "LEADER", "LOG", "LAG", "DISK",
    ]  # fmt: skip
    assert len(rows) == 6 and all(cells[3] == "SERVING" for cells in rows.values())
    assert rows[("acceptor", 0)][2] == kv.acceptors[0].address
    assert rows[("learner", 0)][5].startswith("applied=")
    assert rows[("acceptor", 0)][7].endswith("KiB")  # what its file takes on disk
    assert rows[("proposer", 0)][7] == "-"
    assert "compaction: none yet" in table.stdout
    assert "all 6 nodes serving" in table.stdout

    kv.acceptors[2].kill9()
    down = paxos("status", *_addresses(kv))
    assert down.returncode == 1, down.stdout + down.stderr
    rows = table_rows(down.stdout)
    assert rows[("acceptor", 2)][3] == "DOWN: connection refused"
    assert [cells[3] for key, cells in rows.items() if key != ("acceptor", 2)] == ["SERVING"] * 5
    assert "1 of 6 nodes not serving" in down.stdout
    assert down.stderr == ""


def test_status_watch_redraws_until_ctrl_c(kv_cluster: KvCluster) -> None:
    process = subprocess.Popen(
        [*PAXOS, "status", "--watch", "0.2", *_addresses(kv_cluster)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=clean_env(),
    )
    try:
        assert process.stdout is not None
        redraws = 0
        for line in process.stdout:
            if line.startswith("paxos status every 0.2s"):
                redraws += 1
                if redraws == 3:
                    break
        assert redraws == 3
        process.send_signal(signal.SIGINT)
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
    assert process.returncode == 130
    assert "Traceback" not in stderr


# Bad input -------------------------------------------------------------------------


def test_cli_bad_input_is_one_clear_line(tmp_path: Path) -> None:
    nobody = f"127.0.0.1:{free_port()}"
    usage = [
        ("explain", "0"),
        ("explain", str(MAX_INSTANCE + 1)),
        ("explain", "forty-two"),
        ("status", "--timeout", "0"),
        ("status", "--watch", "-1"),
        ("status", "--acceptors", "localhost"),
        ("status", "--tls-ca", str(tmp_path / "ca.pem")),
        (
            "status",
            "--tls-ca",
            str(tmp_path / "ca.pem"),
            "--tls-cert",
            str(tmp_path / "c.pem"),
            "--tls-key",
            str(tmp_path / "k.pem"),
        ),
    ]
    for args in usage:
        result = paxos(*args)
        assert result.returncode == 2, (args, result.stderr)
        assert "Traceback" not in result.stderr
        assert result.stderr.strip().splitlines()[-1].startswith("paxos"), result.stderr

    # Nobody listening: every node DOWN, exit 1; explain names every address tried.
    status = paxos("status", "--acceptors", nobody, "--proposers", nobody, "--learners", nobody)
    assert status.returncode == 1
    assert [cells[3] for cells in table_rows(status.stdout).values()] == [
        "DOWN: connection refused"
    ] * 3
    explained = paxos("explain", "1", "--proposers", nobody, "--learners", nobody)
    assert explained.returncode == 1
    assert explained.stderr.strip() == (
        f"paxos: error: no proposer or learner answered: {nobody}: connection refused"
    )


def test_status_defaults_are_the_local_clusters_addresses(tmp_path: Path) -> None:
    """`paxos status` with no addresses looks where `paxos cluster` puts nodes."""
    from paxos_service.cli import status as status_cli
    from paxos_service.cluster import LocalCluster

    local = LocalCluster(acceptors=3, proposers=2, learners=1, data_dir=tmp_path, base_port=50051)
    by_role = {
        role: ",".join(n.address for n in local.nodes if n.role == role)
        for role in ("acceptor", "proposer", "learner")
    }
    assert by_role == {
        "acceptor": status_cli.LOCAL_ACCEPTORS,
        "proposer": status_cli.LOCAL_PROPOSERS,
        "learner": status_cli.LOCAL_LEARNERS,
    }
