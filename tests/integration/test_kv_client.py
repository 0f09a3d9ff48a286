"""The key-value client (sync and asyncio) against a real ``paxos cluster``.

Every operation's semantics, watch, exactly-once retries and the asyncio
client. One cluster (3 acceptors, 2 proposers, 2 KV learners) serves the
whole module; each test works under its own key prefix.
"""

from __future__ import annotations

import asyncio
from collections.abc import Iterator

import grpc
import pytest

from paxos_service.client.kv import AsyncKvClient, KeyValue, KvClient, WatchEvent
from paxos_service.client.paxos import AsyncPaxosClient, PaxosClient
from paxos_service.core.errors import InvalidArgumentError, OutcomeUnknownError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.integration.kv_cluster import (
    EVENT_WAIT,
    TIMEOUT,
    ClusterProcess,
    Collector,
    paxos_cluster,
    summary,
)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    with paxos_cluster(tmp_path_factory.mktemp("kv-cluster"), learners=2) as running:
        yield running


@pytest.fixture(scope="module")
def kv(cluster: ClusterProcess) -> Iterator[KvClient]:
    with KvClient(cluster.learners, timeout=TIMEOUT) as client:
        yield client


# Operations --------------------------------------------------------------------------


def test_put_and_get_track_versions_and_revisions(kv: KvClient, ns: str) -> None:
    key = ns + "k"
    assert kv.get(key) is None
    first = kv.put(key, b"v1")
    assert first.previous is None
    assert kv.get(key) == KeyValue(key, b"v1", 1, first.revision, first.revision)
    second = kv.put(key, b"v2")
    assert second.revision == first.revision + 1, "every change adds 1 to the store revision"
    assert second.previous == KeyValue(key, b"v1", 1, first.revision, first.revision)
    assert kv.get(key) == KeyValue(key, b"v2", 2, first.revision, second.revision)
    # Values are bytes, any bytes.
    kv.put(key, b"\x00\xff")
    got = kv.get(key)
    assert got is not None and got.value == b"\x00\xff" and got.version == 3
    detailed = kv.get_detailed(key)
    assert detailed.revision >= second.revision + 1
    assert detailed.applied_instance >= 1 and detailed.lag_instances == 0


def test_delete_then_recreate_starts_a_new_version_history(kv: KvClient, ns: str) -> None:
    key = ns + "k"
    created = kv.put(key, b"a")
    kv.put(key, b"b")
    deleted = kv.delete(key)
    assert deleted.deleted
    assert deleted.revision == created.revision + 2
    assert deleted.previous == KeyValue(key, b"b", 2, created.revision, created.revision + 1)
    assert kv.get(key) is None
    again = kv.delete(key)
    assert not again.deleted and again.previous is None
    assert again.revision >= deleted.revision, "deleting an absent key changes nothing"
    recreated = kv.put(key, b"c")
    assert recreated.previous is None
    assert kv.get(key) == KeyValue(key, b"c", 1, recreated.revision, recreated.revision)


def test_cas_on_expected_value(kv: KvClient, ns: str) -> None:
    key = ns + "k"
    missing = kv.cas(key, b"x", expected_value=b"anything")
    assert not missing.succeeded and missing.current is None, "absent keys never match a value"
    put = kv.put(key, b"old")
    swapped = kv.cas(key, b"new", expected_value=b"old")
    assert swapped.succeeded and swapped.current is None
    assert swapped.revision == put.revision + 1
    lost = kv.cas(key, b"newer", expected_value=b"old")
    assert not lost.succeeded
    assert lost.revision == swapped.revision, "a failed swap changes nothing"
    assert lost.current == KeyValue(key, b"new", 2, put.revision, swapped.revision)
    # The empty value is a value like any other.
    kv.put(key, b"")
    filled = kv.cas(key, b"filled", expected_value=b"")
    assert filled.succeeded
    assert kv.get(key) == KeyValue(key, b"filled", 4, put.revision, filled.revision)


def test_cas_on_expected_version_and_version_zero_creates_if_absent(kv: KvClient, ns: str) -> None:
    lock = ns + "lock"
    mine = kv.cas(lock, b"me", expected_version=0)
    assert mine.succeeded, "version 0 means absent: the first taker creates the key"
    theirs = kv.cas(lock, b"them", expected_version=0)
    assert not theirs.succeeded
    assert theirs.current == KeyValue(lock, b"me", 1, mine.revision, mine.revision)
    assert not kv.cas(lock, b"x", expected_version=2).succeeded
    bumped = kv.cas(lock, b"me-again", expected_version=1)
    assert bumped.succeeded
    assert kv.get(lock) == KeyValue(lock, b"me-again", 2, mine.revision, bumped.revision)
    kv.delete(lock)
    assert kv.cas(lock, b"them", expected_version=0).succeeded, "free again after delete"


def test_range_by_prefix_in_key_order_with_limit(
    kv: KvClient, cluster: ClusterProcess, ns: str
) -> None:
    for key in ["b", "a", "c/2", "c/1"]:
        kv.put(ns + key, key.encode())
    kv.put(ns.rstrip("/") + "-outside", b"not under the prefix")
    keys = [item.key for item in kv.range(ns)]
    assert keys == [ns + "a", ns + "b", ns + "c/1", ns + "c/2"]
    assert [item.key for item in kv.range(ns, limit=2)] == [ns + "a", ns + "b"]
    assert [item.value for item in kv.range(ns + "c/")] == [b"c/1", b"c/2"]
    assert kv.range(ns + "nothing-here") == []
    for address in cluster.learners:
        with KvClient([address], timeout=TIMEOUT) as one:
            one.get(ns + "a")  # through the log: this learner has applied the puts now
            assert [item.key for item in one.range(ns, stale=True)] == keys


def test_stale_get_reports_how_far_behind_the_learner_is(cluster: ClusterProcess, ns: str) -> None:
    key = ns + "k"
    for address in cluster.learners:
        with KvClient([address], timeout=TIMEOUT) as one:
            one.put(key, address.encode())
            fresh = one.get_detailed(key)  # linearizable: applied here up to the read
            assert fresh.kv is not None and fresh.kv.value == address.encode()
            stale = one.get_detailed(key, stale=True)
            assert stale.kv == fresh.kv, "nothing changed since, so the stale copy is current"
            assert stale.applied_instance >= fresh.applied_instance >= 1
            assert stale.lag_instances >= 0
            assert stale.revision >= fresh.revision


def test_watch_replays_history_from_a_revision_then_streams_live_events(
    kv: KvClient, ns: str
) -> None:
    key = ns + "k"
    first = kv.put(key, b"1")
    kv.put(key, b"2")
    kv.put(ns + "other", b"not watched")
    with kv.watch(key, start_revision=first.revision) as watch:
        events = Collector(watch)
        history = events.take(2)
        assert summary(history) == [
            ("put", key, b"1", first.revision),
            ("put", key, b"2", first.revision + 1),
        ]
        assert history[0].previous is None
        assert history[1].previous == KeyValue(key, b"1", 1, first.revision, first.revision)
        deleted = kv.delete(key)
        live = events.take(1)
        assert summary(live) == [("delete", key, b"", deleted.revision)]
        assert live[0].previous is not None and live[0].previous.value == b"2"
        recreated = kv.put(key, b"3")
        assert summary(events.take(1)) == [("put", key, b"3", recreated.revision)]
        assert watch.next_revision == recreated.revision + 1
        events.close()


def test_watch_on_a_prefix_sees_only_keys_under_it(kv: KvClient, ns: str) -> None:
    start = kv.put(ns + "before", b"x").revision + 1
    with kv.watch(ns + "dir/", prefix=True, start_revision=start) as watch:
        events = Collector(watch)
        kv.put(ns + "dir/a", b"1")
        kv.put(ns + "elsewhere", b"no")
        kv.put(ns + "dir/b", b"2")
        kv.delete(ns + "dir/a")
        got = events.take(3)
        assert [(e.type, e.kv.key) for e in got] == [
            ("put", ns + "dir/a"),
            ("put", ns + "dir/b"),
            ("delete", ns + "dir/a"),
        ]
        assert [e.revision for e in got] == sorted(e.revision for e in got)
        events.close()


def test_watch_from_now_sees_every_change_made_after_it_returns(kv: KvClient, ns: str) -> None:
    key = ns + "k"
    kv.put(key, b"old")
    watch = kv.watch(key)  # "from now on"
    put = kv.put(key, b"new")  # before anyone iterates: still delivered
    events = Collector(watch)
    assert summary(events.take(1)) == [("put", key, b"new", put.revision)]
    events.close()
    assert next(watch, None) is None, "a closed watch stays ended"


# Exactly-once ------------------------------------------------------------------------


def test_a_duplicated_put_is_applied_once_even_after_a_later_put(
    cluster: ClusterProcess, ns: str
) -> None:
    """The same RequestId sent again (here: through the other learner, after a
    second put) gets the first answer and must not overwrite the second put."""
    key = ns + "k"
    rid = pb.RequestId(client_id=0x5EED_0000_0001 + len(ns), sequence=1)
    channels = [grpc.insecure_channel(a) for a in cluster.learners]
    try:
        first_stub, other_stub = (pb_grpc.KvServiceStub(c) for c in channels)
        first = first_stub.Put(
            pb.PutRequest(key=key, value=b"first", request_id=rid), timeout=TIMEOUT
        )
        second = first_stub.Put(
            pb.PutRequest(
                key=key,
                value=b"second",
                request_id=pb.RequestId(client_id=rid.client_id, sequence=2),
            ),
            timeout=TIMEOUT,
        )
        assert second.revision == first.revision + 1
        repeat = other_stub.Put(
            pb.PutRequest(key=key, value=b"first", request_id=rid), timeout=TIMEOUT
        )
        assert repeat == first, "the repeat is answered from memory, revision included"
        got = first_stub.Get(pb.GetRequest(key=key), timeout=TIMEOUT)
        assert got.kv.value == b"second"
        assert got.kv.mod_revision == second.revision and got.kv.version == 2
        assert got.revision == second.revision, "the repeat did not change the store"
    finally:
        for channel in channels:
            channel.close()


def test_a_client_reusing_its_id_gets_remembered_answers_and_outcomes(
    cluster: ClusterProcess, ns: str
) -> None:
    """Two clients with one fixed client_id: the second one's sequence numbers
    start again at 1, exactly as a retry after a crash would resend them. The
    first client acknowledged the answer of sequence 1 with its sequence 2, so
    the store forgot that result (and refuses a copy of it: never applied
    twice); sequence 2's answer it never acknowledged, so that one is kept."""
    key = ns + "k"
    client_id = 0x0DD_BA11 + len(ns)
    with KvClient(cluster.learners, timeout=TIMEOUT, client_id=client_id) as a:
        assert a.client_id == client_id
        first = a.put(key, b"a")  # sequence 1
        second = a.put(key, b"b")  # sequence 2, acknowledging the answer of 1
    with KvClient(cluster.learners[::-1], timeout=TIMEOUT, client_id=client_id) as b:
        with pytest.raises(OutcomeUnknownError):
            b.put(key, b"a")  # sequence 1 again: acknowledged, forgotten, refused
        with pytest.raises(InvalidArgumentError, match="sequence"):
            b.put(key, b"something else")  # sequence 2 again, for another request
        assert b.get(key) == KeyValue(key, b"b", 2, first.revision, second.revision)
        with pytest.raises(OutcomeUnknownError):
            b.outcome(client_id, 1)  # forgotten: nobody can tell any more
        outcome = b.outcome(client_id, 2)
        assert outcome is not None and outcome.kv is not None and outcome.kv.value == b"a"
        assert outcome.revision == second.revision and outcome.succeeded
        assert b.outcome(client_id, 900) is None, "never sent: not applied"
        assert b.outcome(client_id + 1, 1) is None


# Asyncio -----------------------------------------------------------------------------


async def test_async_client_has_the_same_semantics(cluster: ClusterProcess, ns: str) -> None:
    key = ns + "k"
    async with AsyncKvClient(cluster.learners, timeout=TIMEOUT) as kv:
        assert await kv.get(key) is None
        put = await kv.put(key, b"v1")
        assert put.previous is None
        assert await kv.get(key) == KeyValue(key, b"v1", 1, put.revision, put.revision)
        assert (await kv.cas(key, b"v2", expected_version=1)).succeeded
        failed = await kv.cas(key, b"v3", expected_value=b"v1")
        assert not failed.succeeded and failed.current is not None
        assert failed.current.value == b"v2"
        assert not (await kv.cas(key, b"v3", expected_version=0)).succeeded
        await kv.put(ns + "k2", b"x")
        assert [i.key for i in await kv.range(ns, limit=1)] == [key]
        assert [i.key for i in await kv.range(ns)] == [key, ns + "k2"]
        stale = await kv.get_detailed(key, stale=True)
        assert stale.applied_instance >= 1 and stale.lag_instances >= 0
        deleted = await kv.delete(key)
        assert deleted.deleted and deleted.previous is not None
        assert deleted.previous.version == 2
        with pytest.raises(OutcomeUnknownError):
            # Sequence 2, the first put: answered and acknowledged, so forgotten.
            await kv.outcome(kv.client_id, 2)
        # Running calls concurrently from one client is fine: distinct sequences.
        results = await asyncio.gather(*(kv.put(f"{ns}c{i}", b"x") for i in range(20)))
        assert len({r.revision for r in results}) == 20


async def test_async_watch_history_then_live_then_cancel(cluster: ClusterProcess, ns: str) -> None:
    key = ns + "k"
    async with AsyncKvClient(cluster.learners, timeout=TIMEOUT) as kv:
        first = await kv.put(key, b"1")
        async with kv.watch(key, start_revision=first.revision) as watch:
            got: asyncio.Queue[WatchEvent] = asyncio.Queue()

            async def reader() -> str:
                async for event in watch:
                    await got.put(event)
                return "ended"

            task = asyncio.create_task(reader())
            history = await asyncio.wait_for(got.get(), EVENT_WAIT)
            assert (history.type, history.kv.value, history.revision) == (
                "put",
                b"1",
                first.revision,
            )
            second = await kv.put(key, b"2")
            live = await asyncio.wait_for(got.get(), EVENT_WAIT)
            assert (live.kv.value, live.revision) == (b"2", second.revision)
            watch.cancel()
            assert await asyncio.wait_for(task, EVENT_WAIT) == "ended"

        # A watch "from now on" started by `async with` sees what follows it;
        # cancelling the task that iterates propagates as a cancellation.
        async with kv.watch(ns, prefix=True) as watch:
            third = await kv.put(ns + "other", b"3")
            event = await asyncio.wait_for(anext(watch), EVENT_WAIT)
            assert (event.kv.key, event.revision) == (ns + "other", third.revision)
            blocked = asyncio.create_task(anext(watch))
            await asyncio.sleep(0)  # let it block in the stream
            blocked.cancel()
            with pytest.raises(asyncio.CancelledError):
                await blocked


async def test_paxos_clients_expose_the_kv_store(cluster: ClusterProcess, ns: str) -> None:
    async_client = AsyncPaxosClient(learners=cluster.learners, timeout=TIMEOUT)
    try:
        assert async_client.kv is async_client.kv, "created once"
        await async_client.kv.put(ns + "k", b"async")
    finally:
        await async_client.close()
    with PaxosClient(learners=cluster.learners, timeout=TIMEOUT) as client:
        got = client.kv.get(ns + "k")
        assert got is not None and got.value == b"async"
