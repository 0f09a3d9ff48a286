"""In-process, deterministic check of "persist, commit, then reply": a real
gRPC acceptor on loopback over real SQLite, whose commits we hold back."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Sequence
from pathlib import Path

import grpc

from paxos_service.core.config import AcceptorConfig
from paxos_service.servers.start import start_acceptor
from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import AcceptorState, RangePromise


class GatedStorage(SqliteAcceptorStorage):
    """Real SQLite storage whose save() waits for the test to open a gate."""

    def __init__(self, path: Path) -> None:
        super().__init__(path, acceptor_id=0, cluster_id="paxos")
        self.gate = threading.Event()
        self.saving = threading.Event()
        self.batches: list[int] = []

    def save(
        self,
        writes: Sequence[tuple[int, AcceptorState]],
        range_promise: RangePromise | None = None,
        chosen_through: int | None = None,
        compacted_through: int | None = None,
    ) -> None:
        self.saving.set()
        self.gate.wait(timeout=30)
        super().save(writes, range_promise, chosen_through, compacted_through)
        self.batches.append(len(writes))


async def test_no_reply_leaves_before_its_commit_and_commits_are_grouped(tmp_path: Path) -> None:
    storage = GatedStorage(tmp_path / "a.db")
    storage.open()
    config = AcceptorConfig(node_id=0, listen="127.0.0.1:0", db_path=tmp_path / "a.db")
    role, servicer = await start_acceptor(config, storage)
    try:
        async with grpc.aio.insecure_channel(f"127.0.0.1:{role.port}") as channel:
            stub = pb_grpc.AcceptorServiceStub(channel)

            def prepare(instance: int) -> pb.PrepareRequest:
                ballot = pb.Ballot(round=1, proposer_id=1)
                return pb.PrepareRequest(prepare=pb.Prepare(instance=instance, ballot=ballot))

            first = asyncio.ensure_future(stub.Prepare(prepare(1), timeout=30))
            await asyncio.to_thread(storage.saving.wait, 10)
            # The first commit is held; 20 more Prepares queue behind it.
            rest = [
                asyncio.ensure_future(stub.Prepare(prepare(i), timeout=30)) for i in range(2, 22)
            ]
            # A duplicate Prepare is rejected without a write of its own, yet it
            # must still wait: it describes state that is not durable yet.
            duplicate = asyncio.ensure_future(stub.Prepare(prepare(1), timeout=30))
            done, _ = await asyncio.wait([first, *rest, duplicate], timeout=0.5)
            assert not done, "a reply left before its state was committed"
            storage.gate.set()
            replies = await asyncio.gather(first, *rest)
            assert all(r.HasField("promise") for r in replies)
            assert (await duplicate).HasField("reject")
        # One commit for the first write, then the queued ones shared commits.
        assert storage.batches[0] == 1
        assert sum(storage.batches) == 21
        assert len(storage.batches) < 21
    finally:
        await role.server.stop(None)
        await servicer.committer.stop()
        storage.close()
