"""Watch history is bounded: a learner keeps the last ``--kv-retain-revisions``
revisions, and a watch from before them gets a clear answer carrying the
compact revision (etcd's ``mvcc: required revision has been compacted``)."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import grpc
import pytest

from paxos_service.client import CompactedError, KvClient
from paxos_service.transport.metadata import COMPACT_REVISION_METADATA
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Cluster, clean_env, start_kv_cluster, wait_until

RETAIN = 10


def test_history_is_kept_for_the_last_revisions_and_older_watches_are_told(
    tmp_path: Path,
) -> None:
    cluster = Cluster(tmp_path)
    try:
        kv = start_kv_cluster(
            cluster,
            proposers=2,
            learners=1,
            learner_args=["--kv-retain-revisions", str(RETAIN)],
        )
        with KvClient(kv.learner_addresses, timeout=10) as client:
            revision = 0
            for i in range(60):
                revision = client.put(f"h/{i % 7}", str(i).encode()).revision
            # The compaction runs once a tenth more than RETAIN has piled up.
            with (
                pytest.raises(CompactedError) as caught,
                client.watch("h/", prefix=True, start_revision=1) as events,
            ):
                next(iter(events))
            compact = caught.value.compact_revision
            assert revision - RETAIN - RETAIN // 10 - 1 <= compact <= revision - RETAIN, compact
            assert caught.value.code is grpc.StatusCode.OUT_OF_RANGE
            assert f"watch from {compact + 1} or later" in str(caught.value)
            # From just after it, history is all there, in order.
            with client.watch("h/", prefix=True, start_revision=compact + 1) as events:
                seen = [next(iter(events)).revision for _ in range(revision - compact)]
            assert seen == list(range(compact + 1, revision + 1))
        # On the wire (grpcurl users): OUT_OF_RANGE, and the revision in trailing metadata.
        with grpc.insecure_channel(kv.learner_addresses[0]) as channel:
            stream = pb_grpc.KvServiceStub(channel).Watch(
                pb.WatchRequest(key="h/", prefix=True, start_revision=1), timeout=10
            )
            with pytest.raises(grpc.RpcError) as raw:
                next(stream)
            assert raw.value.code() is grpc.StatusCode.OUT_OF_RANGE  # type: ignore[attr-defined]
            trailers = dict(raw.value.trailing_metadata())  # type: ignore[attr-defined]
            assert int(trailers[COMPACT_REVISION_METADATA]) == compact
    finally:
        cluster.stop()


def test_paxos_kv_compact_compacts_every_learner_at_one_revision(tmp_path: Path) -> None:
    cluster = Cluster(tmp_path)
    try:
        kv = start_kv_cluster(cluster, proposers=2, learners=2)
        learners = ",".join(kv.learner_addresses)
        with KvClient(kv.learner_addresses, timeout=10) as client:
            for i in range(8):
                client.put("c/key", str(i).encode())
        paxos = [sys.executable, "-m", "paxos_service", "kv", "--learners", learners]
        done = subprocess.run(
            [*paxos, "compact", "5"], capture_output=True, text=True, env=clean_env(), timeout=60
        )
        assert done.returncode == 0, done.stderr
        assert done.stdout == "compacted through revision 5 (store at revision 8)\n"
        future = subprocess.run(
            [*paxos, "compact", "99"], capture_output=True, text=True, env=clean_env(), timeout=60
        )
        assert future.returncode != 0
        assert "revision 99 is in the future: the store is at revision 8" in future.stderr
        # Every learner, each asked on its own: the history through 5 is gone there.
        for address in kv.learner_addresses:
            with KvClient([address], timeout=10) as one:
                # The second learner may apply the compact a moment later.
                wait_until(
                    lambda one=one: _compact_revision(one) == 5, 10, f"{address} to compact at 5"
                )
                with one.watch("c/key", start_revision=6) as events:
                    assert next(iter(events)).kv.value == b"5"
        watch = subprocess.run(
            [*paxos, "watch", "c/key", "--from-revision", "2"],
            capture_output=True,
            text=True,
            env=clean_env(),
            timeout=60,
        )
        assert watch.returncode == 1
        assert "revision 2 is compacted" in watch.stderr
        assert "watch from 6 or later" in watch.stderr
    finally:
        cluster.stop()


def _compact_revision(client: KvClient) -> int | None:
    """What a watch from revision 5 is told: the compact revision, or None if
    history from 5 is still there."""
    try:
        with client.watch("c/key", start_revision=5) as events:
            next(iter(events))
    except CompactedError as exc:
        return exc.compact_revision
    return None
