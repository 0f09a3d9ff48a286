"""The key-value client against a real ``paxos cluster`` when things go wrong.

Bad input, values too large, unreachable and dead learners, and outcome
queries when no proposer answers. The module has its own cluster (3
acceptors, 2 proposers, 2 KV learners); the tests that disturb processes (an
extra learner killed, the proposers paused) come last.
"""

from __future__ import annotations

import os
import signal
import time
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from paxos_service.client.kv import AsyncKvClient, KvClient
from paxos_service.client.paxos import AsyncPaxosClient
from paxos_service.core.errors import InvalidArgumentError, OutcomeUnknownError, UnavailableError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.integration.kv_cluster import TIMEOUT, ClusterProcess, Collector, paxos_cluster, summary
from tests.support.processes import Cluster, free_port


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    with paxos_cluster(tmp_path_factory.mktemp("kv-cluster"), learners=2) as running:
        yield running


@pytest.fixture(scope="module")
def kv(cluster: ClusterProcess) -> Iterator[KvClient]:
    with KvClient(cluster.learners, timeout=TIMEOUT) as client:
        yield client


# Bad input and unreachable learners --------------------------------------------------


def test_bad_input_is_invalid_argument(kv: KvClient, cluster: ClusterProcess) -> None:
    # Judged by the server (the one place that knows the key rules):
    with pytest.raises(InvalidArgumentError, match="key must not be empty"):
        kv.put("", b"v")
    with pytest.raises(InvalidArgumentError, match="key must not be empty"):
        kv.get("")
    with pytest.raises(InvalidArgumentError, match="longer than"):
        kv.put("k" * 5000, b"v")
    with pytest.raises(InvalidArgumentError, match="longer than"):
        kv.cas("k" * 5000, b"v", expected_version=0)
    # Shapes the client's API cannot express:
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        kv.cas("k", b"v")
    with pytest.raises(InvalidArgumentError, match="exactly one"):
        kv.cas("k", b"v", expected_value=b"a", expected_version=1)
    with pytest.raises(InvalidArgumentError, match="bytes"):
        kv.put("k", "text")  # type: ignore[arg-type]
    with pytest.raises(InvalidArgumentError, match="expected_version"):
        kv.cas("k", b"v", expected_version=-1)
    with pytest.raises(InvalidArgumentError, match="prefix=True"):
        kv.watch("")
    # And the server refuses a compare-and-swap without an expectation too.
    with grpc.insecure_channel(cluster.learners[0]) as channel:
        with pytest.raises(grpc.RpcError) as raised:
            pb_grpc.KvServiceStub(channel).CompareAndSwap(
                pb.CompareAndSwapRequest(key="k", value=b"v"), timeout=TIMEOUT
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


def test_a_value_too_large_to_send_is_refused_by_the_client() -> None:
    with KvClient(["127.0.0.1:1"], max_value_bytes=10) as kv:
        with pytest.raises(InvalidArgumentError, match="max_value_bytes"):
            kv.put("k", b"x" * 11)
        with pytest.raises(InvalidArgumentError, match="expected_value"):
            kv.cas("k", b"v", expected_value=b"x" * 11)


def test_a_value_too_large_for_a_log_entry_is_invalid_argument(kv: KvClient, ns: str) -> None:
    """1 MiB is the default value limit; a command carrying a 1 MiB value no
    longer fits in a log entry. The answer must be a clean INVALID_ARGUMENT."""
    with pytest.raises(InvalidArgumentError, match="limit"):
        kv.put(ns + "big", b"x" * (1 << 20))
    assert kv.put(ns + "small", b"x").previous is None, "and the store keeps working"


def _dead_addresses(n: int) -> list[str]:
    return [f"127.0.0.1:{free_port()}" for _ in range(n)]


def test_unreachable_learners_give_unavailable_within_the_deadline() -> None:
    with KvClient(_dead_addresses(2), timeout=0.5) as kv:
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="no learner could serve"):
            kv.put("k", b"v")
        assert time.monotonic() - started < 1.5
        with pytest.raises(UnavailableError):
            kv.get("k", stale=True)
        with pytest.raises(UnavailableError):
            kv.watch("k")


async def test_unreachable_learners_give_unavailable_within_the_deadline_async() -> None:
    async with AsyncKvClient(_dead_addresses(2), timeout=0.5) as kv:
        started = time.monotonic()
        with pytest.raises(UnavailableError, match="no learner could serve"):
            await kv.cas("k", b"v", expected_version=0)
        assert time.monotonic() - started < 1.5


async def test_async_paxos_client_maps_unavailable() -> None:
    client = AsyncPaxosClient(learners=_dead_addresses(1), timeout=0.5)
    try:
        with pytest.raises(UnavailableError):
            await client.get(1)
    finally:
        await client.close()


def test_a_dead_learner_in_the_list_is_skipped(cluster: ClusterProcess, ns: str) -> None:
    with KvClient([*_dead_addresses(1), *cluster.learners], timeout=TIMEOUT) as kv:
        assert kv.put(ns + "k", b"v").previous is None
        got = kv.get(ns + "k")
        assert got is not None and got.value == b"v"


# Disruptive tests: these run last ----------------------------------------------------


def test_a_watch_resumes_on_another_learner_when_its_learner_dies(
    cluster: ClusterProcess, kv: KvClient, ns: str, tmp_path: Path
) -> None:
    """A third learner, started for this test, serves the watch; it is killed
    with SIGKILL mid-watch. The watch carries on at the next learner from the
    next revision: no event lost, none repeated."""
    extra = Cluster(tmp_path)
    try:
        node = extra.node(
            "learner",
            9,
            "--acceptors",
            ",".join(cluster.addresses("acceptor")),
            "--proposers",
            ",".join(cluster.addresses("proposer")),
            "--db",
            str(tmp_path / "extra-learner.db"),
        )
        node.start().wait_healthy()
        key = ns + "k"
        first = kv.put(key, b"1")
        client = KvClient([node.address, cluster.learners[0]], timeout=TIMEOUT)
        with client, client.watch(key, start_revision=first.revision) as watch:
            events = Collector(watch)
            # The extra learner catches up from the acceptors, then serves this.
            assert summary(events.take(1)) == [("put", key, b"1", first.revision)]
            node.kill9()
            second = kv.put(key, b"2")
            third = kv.put(key, b"3")
            assert summary(events.take(2)) == [
                ("put", key, b"2", second.revision),
                ("put", key, b"3", third.revision),
            ]
            assert events.events.empty(), "nothing delivered twice"
            events.close()
    finally:
        extra.stop()


def test_outcome_unknown_when_no_proposer_answers_then_outcome_tells(
    cluster: ClusterProcess, kv: KvClient, ns: str
) -> None:
    """Both proposers paused (SIGSTOP): the learner cannot tell whether an
    append went through, the client retries with the same RequestId until its
    deadline, then raises OutcomeUnknownError with that id. Once the
    proposers resume, ``outcome`` answers, and the store agrees with it."""
    key = ns + "k"
    kv.put(key, b"before")
    proposers = cluster.pids("proposer")
    with KvClient(cluster.learners, timeout=1.5) as client:
        for pid in proposers:
            os.kill(pid, signal.SIGSTOP)
        try:
            started = time.monotonic()
            with pytest.raises(OutcomeUnknownError) as raised:
                client.put(key, b"during")
            elapsed = time.monotonic() - started
        finally:
            for pid in proposers:
                os.kill(pid, signal.SIGCONT)
        assert elapsed < 3.0, "the deadline holds"
        error = raised.value
        assert (error.client_id, error.sequence) == (client.client_id, 1)
        assert f"outcome({client.client_id}, 1)" in str(error)
        outcome = kv.outcome(error.client_id, error.sequence)
        got = kv.get(key)
        assert got is not None
        if outcome is None:
            assert got.value == b"before", "not applied, and the barrier makes that final"
        else:
            assert outcome.succeeded and got.value == b"during"
        with KvClient(cluster.learners, timeout=TIMEOUT, client_id=error.client_id) as again:
            if outcome is None:
                # "Not applied" is final: the same request id is fenced for
                # good, so a late copy can never apply it; write anew instead.
                with pytest.raises(InvalidArgumentError):
                    again.put(key, b"during")
                assert kv.outcome(error.client_id, 1) is None
                unchanged = kv.get(key)
                assert unchanged is not None and unchanged.value == b"before"
                again.put(key, b"during")  # the next sequence
            else:
                # Applied: a retry with the same id is answered, not applied again.
                retried = again.put(key, b"during")
                assert retried.revision == outcome.revision, "applied once, not twice"
        final = kv.get(key)
        assert final is not None and final.value == b"during"
