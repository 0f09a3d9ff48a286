"""Every role's /metrics on real processes: the counts match the operations
the test performed.

Each node serves Prometheus metrics on its own port (``Cluster(metrics=True)``);
the test scrapes them over HTTP and parses the text format with
prometheus_client's parser, as Prometheus would. Where the protocol allows
more than one count (a third acceptor's vote may or may not arrive before the
proposer moves on), the assertion is the protocol's own bound: for example
every chosen value had a majority of acceptors accept it.
"""

from __future__ import annotations

import socket
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest
from prometheus_client.parser import text_string_to_metric_families

from paxos_service.client.kv import KvClient
from paxos_service.core.errors import InvalidArgumentError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, KvCluster, Node, start_kv_cluster, wait_until

PROPOSER = "paxos_service.v1.ProposerService"
LEARNER = "paxos_service.v1.LearnerService"
KV = "paxos_service.v1.KvService"
MAJORITY = 2  # of 3 acceptors


@dataclass(frozen=True)
class Scrape:
    """One scrape of one node: sample name and labels -> value."""

    samples: dict[tuple[str, frozenset[tuple[str, str]]], float]

    def value(self, name: str, **labels: str) -> float:
        """The sample with exactly these labels; 0 if absent (a counter never
        incremented, a histogram never observed)."""
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str, **labels: str) -> float:
        """The sum over every sample of ``name`` that has these labels."""
        want = set(labels.items())
        return sum(v for (n, ls), v in self.samples.items() if n == name and want <= ls)

    def rpc(self, service: str, method: str, code: str | None = None, what: str = "") -> float:
        """A grpc_server_* value of a unary method: handled_total with ``code``,
        else the metric named by ``what`` (e.g. started_total)."""
        labels = {"grpc_type": "unary", "grpc_service": service, "grpc_method": method}
        if code is not None:
            return self.value("grpc_server_handled_total", grpc_code=code, **labels)
        return self.value(f"grpc_server_{what}", **labels)


def scrape(node: Node) -> Scrape:
    assert node.metrics_address is not None, "start the cluster with metrics=True"
    url = f"http://{node.metrics_address}/metrics"
    with urllib.request.urlopen(url, timeout=5) as response:
        text = response.read().decode()
    samples = {
        (s.name, frozenset(s.labels.items())): s.value
        for family in text_string_to_metric_families(text)
        for s in family.samples
    }
    return Scrape(samples)


def get_leader(node: Node) -> pb.GetLeaderResponse:
    with grpc.insecure_channel(node.address) as channel:
        reply: pb.GetLeaderResponse = pb_grpc.ProposerServiceStub(channel).GetLeader(
            pb.GetLeaderRequest(), timeout=5
        )
        return reply


@pytest.fixture
def metered(tmp_path: Path) -> Iterator[Cluster]:
    cluster = Cluster(tmp_path, metrics=True)
    try:
        yield cluster
    finally:
        cluster.stop()


def test_single_decree_counts_match_the_proposals_made(metered: Cluster) -> None:
    acceptors = metered.start_acceptors(3)
    learner = metered.start_learner(0)
    proposer = metered.start_proposer(0, learners=[learner])
    proposals, invalid = 5, 3
    with grpc.insecure_channel(proposer.address) as channel:
        stub = pb_grpc.ProposerServiceStub(channel)
        for instance in range(1, proposals + 1):
            reply = stub.Propose(pb.ProposeRequest(instance=instance, value=b"v"), timeout=20)
            assert reply.own_value_chosen
        for _ in range(invalid):
            with pytest.raises(grpc.RpcError) as info:
                stub.Propose(pb.ProposeRequest(instance=0, value=b"v"), timeout=20)
            assert info.value.code() == grpc.StatusCode.INVALID_ARGUMENT

    p = scrape(proposer)
    calls = proposals + invalid
    assert p.rpc(PROPOSER, "Propose", "OK") == proposals
    assert p.rpc(PROPOSER, "Propose", "InvalidArgument") == invalid
    assert p.rpc(PROPOSER, "Propose", "Unavailable") == 0
    assert p.rpc(PROPOSER, "Propose", what="started_total") == calls
    assert p.rpc(PROPOSER, "Propose", what="msg_received_total") == calls
    assert p.rpc(PROPOSER, "Propose", what="msg_sent_total") == proposals
    assert p.rpc(PROPOSER, "Propose", what="handling_seconds_count") == calls
    single = {"mode": "single_decree"}
    # Bad requests never reach the protocol.
    assert p.value("paxos_proposals_total", **single) == proposals
    assert p.value("paxos_chosen_total", **single) == proposals
    assert p.value("paxos_phase2_seconds_count", **single) == proposals
    phase1 = p.value("paxos_phase1_seconds_count", **single)
    assert phase1 >= proposals  # more only if a round timed out and was retried
    # One proposer on fresh instances: nobody has a higher ballot to preempt it.
    # (A Reject can still happen: an acceptor that got the Accept before the
    # Prepare of the same ballot refuses the Prepare, harmlessly.)
    assert p.value("paxos_preemptions_total", **single) == 0

    votes = [scrape(a) for a in acceptors]
    promises = sum(v.value("paxos_acceptor_promises_total", message="prepare") for v in votes)
    accepts = sum(v.value("paxos_acceptor_accepts_total") for v in votes)
    assert promises >= MAJORITY * phase1  # every phase 1 that succeeded had a majority
    assert accepts >= MAJORITY * proposals  # every chosen value had a majority
    assert accepts <= len(acceptors) * phase1  # one Accept per acceptor per phase 2
    rejected = sum(v.total("paxos_acceptor_rejections_total") for v in votes)
    assert p.value("paxos_rejections_total", **single) <= rejected  # some not waited for
    for v in votes:
        # Every promise and every accept here changed state, so each was one
        # write in some group commit (several may share one commit). A vote
        # the proposer no longer waited for (it had a majority) may have been
        # written and then cancelled before its reply was counted.
        replied = v.value("paxos_acceptor_promises_total", message="prepare") + v.value(
            "paxos_acceptor_accepts_total"
        )
        cancelled = sum(
            v.value(
                "grpc_server_handled_total",
                grpc_type="unary",
                grpc_service="paxos_service.v1.AcceptorService",
                grpc_method=method,
                grpc_code="Canceled",
            )
            for method in ("Prepare", "Accept")
        )
        writes = v.value("paxos_acceptor_commit_writes_sum")
        assert replied <= writes <= replied + cancelled
        assert 1 <= v.value("paxos_acceptor_commit_seconds_count") <= writes
        assert v.value("paxos_acceptor_commit_failures_total") == 0

    # The proposer tells the learner after answering the client.
    def learned() -> bool:
        return scrape(learner).value("paxos_learner_decisions_total", source="decide") == proposals

    wait_until(learned, 20, f"the learner to count {proposals} decisions")
    assert scrape(learner).rpc(LEARNER, "Decide", "OK") == proposals


@pytest.fixture
def kv(metered: Cluster) -> KvCluster:
    return start_kv_cluster(metered)


def test_kv_counts_leader_gauges_and_learner_lag(kv: KvCluster) -> None:
    leader = kv.leader()
    first, second = kv.learners
    puts, invalid = 6, 2
    with KvClient([first.address], timeout=20) as client:
        for i in range(puts):
            client.put(f"key/{i}", b"value")
        for _ in range(invalid):
            with pytest.raises(InvalidArgumentError):
                client.put("", b"empty keys are refused by the learner")

    served = scrape(first)
    assert served.rpc(KV, "Put", "OK") == puts
    assert served.rpc(KV, "Put", "InvalidArgument") == invalid
    # Every call that started ended with some code (a retried attempt, say
    # Aborted, would show up under its own code; the OK count stays exact).
    assert served.rpc(KV, "Put", what="started_total") == served.total(
        "grpc_server_handled_total", grpc_service=KV, grpc_method="Put"
    )
    assert scrape(second).rpc(KV, "Put", what="started_total") == 0

    # Idle now: every learner applies everything the leader has chosen.
    def caught_up() -> bool:
        chosen_through = get_leader(leader).chosen_through
        return all(
            (s := scrape(n)).value("paxos_learner_applied_instance") == chosen_through
            and s.value("paxos_learner_decided_instance") == chosen_through
            and s.value("paxos_learner_lag_instances") == 0
            for n in kv.learners
        )

    wait_until(caught_up, 30, "every learner to apply the whole log (lag 0)", interval=0.2)
    chosen_through = get_leader(leader).chosen_through
    assert chosen_through >= puts
    for n in kv.learners:
        s = scrape(n)
        # Each instance was learned once (told, or found at the acceptors) and applied once.
        assert s.total("paxos_learner_decisions_total") == chosen_through
        assert s.value("paxos_learner_apply_seconds_count") == chosen_through

    proposers = {n.node_id: scrape(n) for n in kv.proposers}
    multi = {"mode": "multi_paxos"}
    chosen = sum(s.value("paxos_chosen_total", **multi) for s in proposers.values())
    proposed = sum(s.value("paxos_proposals_total", **multi) for s in proposers.values())
    resent = sum(s.value("paxos_leader_retransmits_total") for s in proposers.values())
    elected = sum(s.value("paxos_phase1_seconds_count", **multi) for s in proposers.values())
    batched = sum(s.value("paxos_leader_batch_commands_sum") for s in proposers.values())
    assert chosen >= chosen_through  # every instance was chosen by some leader
    assert proposed >= chosen
    assert elected >= 1
    assert batched >= puts  # every acknowledged put went through a leader's batch
    assert proposers[leader.node_id].value("paxos_leader_chosen_through") == chosen_through

    votes = [scrape(a) for a in kv.acceptors]
    accepts = sum(v.value("paxos_acceptor_accepts_total") for v in votes)
    range_promises = sum(
        v.value("paxos_acceptor_promises_total", message="prepare_range") for v in votes
    )
    assert accepts >= MAJORITY * chosen
    assert accepts <= len(kv.acceptors) * (proposed + resent)
    assert range_promises >= MAJORITY * elected
    for v in votes:
        assert v.value("paxos_acceptor_commit_seconds_count") >= 1

    assert_leader_gauges(kv, get_leader(leader).leader_id)

    # Kill the leader: the survivors see a new one.
    survivors = [n for n in kv.proposers if n is not leader]
    seen_before = {n.node_id: scrape(n).value("paxos_leader_changes_seen_total") for n in survivors}
    assert all(seen >= 1 for seen in seen_before.values())  # the first election
    leader.kill9()
    new_leader = kv.leader()
    assert new_leader is not leader

    def changed() -> bool:
        return all(
            scrape(n).value("paxos_leader_changes_seen_total") > seen_before[n.node_id]
            for n in survivors
        )

    wait_until(changed, 30, "the surviving proposers to count a leader change", interval=0.2)
    assert_leader_gauges(kv, get_leader(new_leader).leader_id)


def assert_leader_gauges(kv: KvCluster, leader_id: int) -> None:
    """Every live proposer's gauges agree with GetLeader (followers hear of the
    leader from its heartbeats, so wait for them)."""

    def agree() -> bool:
        for n in kv.proposers:
            if not n.alive():
                continue
            s = scrape(n)
            if s.value("paxos_leader_current_id") != leader_id:
                return False
            if s.value("paxos_leader_is_leader") != (1 if n.node_id == leader_id else 0):
                return False
        return True

    wait_until(agree, 30, f"every proposer's gauges to name proposer {leader_id} as leader")


def test_a_node_whose_metrics_port_is_busy_refuses_to_start(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        with socket.socket() as busy:
            busy.bind(("127.0.0.1", 0))
            busy.listen()
            taken = f"127.0.0.1:{busy.getsockname()[1]}"
            node = cluster.node(
                "acceptor", 0, "--db", str(cluster.db_path(0)), "--metrics-listen", taken
            ).start()
            assert node.process is not None
            assert node.process.wait(timeout=60) != 0
        assert f"cannot serve metrics on {taken}" in node.log()
    finally:
        cluster.stop()
