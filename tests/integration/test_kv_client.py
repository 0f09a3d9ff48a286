"""The key-value client (sync and asyncio) against a real ``paxos cluster``:
every operation's semantics, watch, exactly-once retries, outcome queries,
bad input and unreachable learners.

One cluster (3 acceptors, 2 proposers, 2 KV learners) serves the whole
module; each test works under its own key prefix. The tests that disturb
processes (an extra learner killed, the proposers paused) come last.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import queue
import re
import signal
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import grpc
import pytest

from paxos_service.client import (
    AsyncPaxosClient,
    InvalidArgumentError,
    OutcomeUnknownError,
    PaxosClient,
    UnavailableError,
)
from paxos_service.kv_client import (
    AsyncKvClient,
    KeyValue,
    KvClient,
    Watch,
    WatchEvent,
)
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, clean_env, free_port

#: Generous per-call deadline: the first calls may wait for a leader election.
TIMEOUT = 10.0
#: How long a test waits for an expected watch event before failing.
EVENT_WAIT = 10.0


# A `paxos cluster` process --------------------------------------------------------


@dataclass
class ClusterProcess:
    """A running ``paxos cluster`` and the nodes its banner lists."""

    process: subprocess.Popen[str]
    banner: list[str]
    rows: list[tuple[str, int, str, int]]  # role, id, address, pid
    data_dir: Path

    def addresses(self, role: str) -> list[str]:
        return [address for r, _, address, _ in self.rows if r == role]

    def pids(self, role: str) -> list[int]:
        return [pid for r, _, _, pid in self.rows if r == role]

    @property
    def learners(self) -> list[str]:
        return self.addresses("learner")


def _port_range(count: int) -> int:
    """A base port with ``count`` free ports from it (checked just before use)."""
    for _ in range(50):
        base = free_port()
        if base + count >= 65535:
            continue
        with contextlib.ExitStack() as stack:
            try:
                for port in range(base, base + count):
                    s = stack.enter_context(socket.socket())
                    s.bind(("127.0.0.1", port))
            except OSError:
                continue
        return base
    raise AssertionError("no free range of ports")


@contextlib.contextmanager
def paxos_cluster(workdir: Path, *, learners: int = 1) -> Iterator[ClusterProcess]:
    """Run ``paxos cluster`` as a user would, until the context exits."""
    base = _port_range(5 + learners)
    data_dir = workdir / "data"
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paxos_service",
            "cluster",
            "--base-port",
            str(base),
            "--data-dir",
            str(data_dir),
            "--learners",
            str(learners),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
        cwd=workdir,
        env=clean_env(),
    )
    banner: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        banner.append(line.rstrip("\n"))
        if "Ctrl-C stops the cluster" in line:
            break
    else:
        process.wait(timeout=10)
        raise AssertionError("paxos cluster exited while starting:\n" + "\n".join(banner))
    rows = [
        (m[1], int(m[2]), m[3], int(m[4]))
        for m in (
            re.match(r"^(acceptor|proposer|learner)\s+(\d+)\s+(\S+)\s+(\d+)", b) for b in banner
        )
        if m
    ]
    running = ClusterProcess(process, banner, rows, data_dir)
    try:
        yield running
    finally:
        for pid in running.pids("proposer"):  # never leave a paused process behind
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGCONT)
        process.send_signal(signal.SIGTERM)
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait(timeout=10)
        for *_, pid in rows:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    with paxos_cluster(tmp_path_factory.mktemp("kv-cluster"), learners=2) as running:
        yield running


@pytest.fixture(scope="module")
def kv(cluster: ClusterProcess) -> Iterator[KvClient]:
    with KvClient(cluster.learners, timeout=TIMEOUT) as client:
        yield client


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    return f"{request.node.name}/"


# Collecting watch events without sleeping --------------------------------------------


class Collector:
    """Iterates a sync watch on a thread; the test waits for events in a queue."""

    def __init__(self, watch: Watch) -> None:
        self.watch = watch
        self.events: queue.Queue[WatchEvent | BaseException | None] = queue.Queue()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self) -> None:
        try:
            for event in self.watch:
                self.events.put(event)
        except BaseException as exc:
            self.events.put(exc)
        self.events.put(None)

    def take(self, n: int) -> list[WatchEvent]:
        out: list[WatchEvent] = []
        while len(out) < n:
            item = self.events.get(timeout=EVENT_WAIT)
            if isinstance(item, BaseException):
                raise item
            assert item is not None, f"the watch ended after {out}"
            out.append(item)
        return out

    def close(self) -> None:
        self.watch.close()
        self.thread.join(timeout=EVENT_WAIT)
        assert not self.thread.is_alive(), "close() must end a blocked iteration"


def _summary(events: list[WatchEvent]) -> list[tuple[str, str, bytes, int]]:
    return [(e.type, e.kv.key, e.kv.value, e.revision) for e in events]


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
        assert _summary(history) == [
            ("put", key, b"1", first.revision),
            ("put", key, b"2", first.revision + 1),
        ]
        assert history[0].previous is None
        assert history[1].previous == KeyValue(key, b"1", 1, first.revision, first.revision)
        deleted = kv.delete(key)
        live = events.take(1)
        assert _summary(live) == [("delete", key, b"", deleted.revision)]
        assert live[0].previous is not None and live[0].previous.value == b"2"
        recreated = kv.put(key, b"3")
        assert _summary(events.take(1)) == [("put", key, b"3", recreated.revision)]
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
    assert _summary(events.take(1)) == [("put", key, b"new", put.revision)]
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
    start again at 1, exactly as a retry after a crash would resend them."""
    key = ns + "k"
    client_id = 0x0DD_BA11 + len(ns)
    with KvClient(cluster.learners, timeout=TIMEOUT, client_id=client_id) as a:
        assert a.client_id == client_id
        first = a.put(key, b"a")  # sequence 1
        second = a.put(key, b"b")  # sequence 2
    with KvClient(cluster.learners[::-1], timeout=TIMEOUT, client_id=client_id) as b:
        assert b.put(key, b"a") == first, "sequence 1 again: the remembered answer"
        with pytest.raises(InvalidArgumentError, match="sequence"):
            b.put(key, b"something else")  # sequence 2 again, for another request
        assert b.get(key) == KeyValue(key, b"b", 2, first.revision, second.revision)
        outcome = b.outcome(client_id, 1)
        assert outcome is not None and outcome.revision == first.revision and outcome.succeeded
        assert outcome.kv is None, "the first put had no previous key"
        outcome = b.outcome(client_id, 2)
        assert outcome is not None and outcome.kv is not None and outcome.kv.value == b"a"
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
        outcome = await kv.outcome(kv.client_id, 2)  # sequence 2 was the first put
        assert outcome is not None and outcome.revision == put.revision
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
            assert _summary(events.take(1)) == [("put", key, b"1", first.revision)]
            node.kill9()
            second = kv.put(key, b"2")
            third = kv.put(key, b"3")
            assert _summary(events.take(2)) == [
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
