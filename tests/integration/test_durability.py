"""The durability contract: no reply before commit, refuse unreadable state,
stop voting when storage fails."""

from __future__ import annotations

import asyncio
import shutil
import subprocess
import sys
from pathlib import Path

import grpc
import pytest
from grpc_health.v1 import health_pb2

from paxos_service.storage.sqlite import SqliteAcceptorStorage
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import Ballot
from tests.support.processes import Cluster, clean_env, health_status, wait_until


def _accept(instance: int, value: bytes, round_: int = 1) -> pb.AcceptRequest:
    ballot = pb.Ballot(round=round_, proposer_id=9)
    return pb.AcceptRequest(
        accept=pb.Accept(instance=instance, ballot=ballot, value=value),
        space=pb.INSTANCE_SPACE_LOG,  # stored under key `instance` (the test reads the file)
    )


def _start_acceptor_expecting_refusal(db: Path, acceptor_id: int = 0) -> str:
    result = subprocess.run(
        [
            sys.executable,
            "-m",
            "paxos_service",
            "acceptor",
            "--id",
            str(acceptor_id),
            "--listen",
            "127.0.0.1:0",
            "--insecure",
            "--db",
            str(db),
        ],
        capture_output=True,
        text=True,
        timeout=30,
        env=clean_env(),
        check=False,
    )
    assert result.returncode != 0, "the acceptor must refuse to start"
    assert "Traceback" not in result.stderr
    return result.stderr


def _make_db(cluster: Cluster) -> Path:
    acceptor = cluster.start_acceptors(1)[0]
    with grpc.insecure_channel(acceptor.address) as channel:
        stub = pb_grpc.AcceptorServiceStub(channel)
        for i in range(1, 200):
            stub.Accept(_accept(i, b"x" * 200), timeout=5)
    acceptor.terminate()
    return cluster.db_path(0)


def test_corrupt_database_refuses_to_start(cluster: Cluster) -> None:
    db = _make_db(cluster)
    data = bytearray(db.read_bytes())
    assert len(data) > 5 * 4096
    data[3 * 4096 : 3 * 4096 + 1500] = b"\x5a" * 1500  # smash a b-tree page
    db.write_bytes(bytes(data))
    stderr = _start_acceptor_expecting_refusal(db)
    assert "refuses to start" in stderr
    # Depending on which page was hit, SQLite's quick_check or its first read notices.
    assert "integrity check" in stderr or "database disk image is malformed" in stderr


@pytest.mark.parametrize(
    ("content", "expected"),
    [(b"", "exists but is empty"), (b"not a database" * 100, "file is not a database")],
)
def test_unreadable_file_refuses_to_start(tmp_path: Path, content: bytes, expected: str) -> None:
    db = tmp_path / "acceptor.db"
    db.write_bytes(content)
    assert expected in _start_acceptor_expecting_refusal(db)


def test_database_of_another_acceptor_refuses_to_start(cluster: Cluster) -> None:
    db = _make_db(cluster)
    assert "belongs to acceptor 0, not to acceptor 1" in _start_acceptor_expecting_refusal(db, 1)


async def test_every_acknowledged_accept_survives_kill_9(cluster: Cluster) -> None:
    """Fire concurrent Accepts at one acceptor, SIGKILL it mid-stream, and find
    every acknowledged (instance, ballot, value) in its SQLite file."""
    acceptor = cluster.start_acceptors(1)[0]
    acked: dict[int, bytes] = {}
    enough = asyncio.Event()
    async with grpc.aio.insecure_channel(acceptor.address) as channel:
        stub = pb_grpc.AcceptorServiceStub(channel)

        async def one(i: int) -> None:
            value = f"value-{i}".encode()
            try:
                response = await stub.Accept(_accept(i, value), timeout=10)
            except grpc.aio.AioRpcError:
                return
            assert response.HasField("accepted")
            acked[i] = value
            if len(acked) >= 300:
                enough.set()

        tasks = [asyncio.create_task(one(i)) for i in range(1, 3001)]
        await asyncio.wait_for(enough.wait(), timeout=60)
        acceptor.kill9()
        await asyncio.gather(*tasks)
    assert 300 <= len(acked) < 3000, "the kill must land mid-stream"
    storage = SqliteAcceptorStorage(cluster.db_path(0), acceptor_id=0, cluster_id="paxos")
    storage.open()
    try:
        states = storage.load_all()
    finally:
        storage.close()
    for instance, value in acked.items():
        assert instance in states, f"acknowledged Accept for instance {instance} was lost"
        assert states[instance].accepted_value == value
        assert states[instance].accepted_ballot == Ballot(1, 9)


@pytest.fixture
def tiny_disk(tmp_path: Path) -> object:
    """A 320 KiB tmpfs: writing to it soon fails with SQLITE_FULL."""
    mount = tmp_path / "tiny"
    mount.mkdir()
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=320k", "tmpfs", str(mount)], check=True)
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=False)


def test_disk_full_stops_voting_and_keeps_state(cluster: Cluster, tiny_disk: Path) -> None:
    node = cluster.node("acceptor", 0, "--db", str(tiny_disk / "acceptor.db")).start()
    node.wait_healthy()
    acked: dict[int, bytes] = {}
    failure = None
    with grpc.insecure_channel(node.address) as channel:
        stub = pb_grpc.AcceptorServiceStub(channel)
        for i in range(1, 200):
            value = bytes([i % 256]) * 8192
            try:
                stub.Accept(_accept(i, value), timeout=10)
            except grpc.RpcError as exc:
                failure = exc
                break
            acked[i] = value
        assert failure is not None, "the disk never filled up"
        assert failure.code() == grpc.StatusCode.UNAVAILABLE
        assert "could not persist" in failure.details()
        wait_until(
            lambda: (
                health_status(node.address, "paxos_service.v1.AcceptorService")
                == health_pb2.HealthCheckResponse.NOT_SERVING
            ),
            10,
            "health NOT_SERVING",
        )
        with pytest.raises(grpc.RpcError) as later:
            prepare = pb.Prepare(instance=1, ballot=pb.Ballot(round=50, proposer_id=1))
            stub.Prepare(pb.PrepareRequest(prepare=prepare), timeout=5)
        assert later.value.code() == grpc.StatusCode.UNAVAILABLE
        assert "stopped voting" in later.value.details()
    node.kill9()
    # Nothing acknowledged was lost, and the file is still readable.
    copy = cluster.workdir / "copy"
    copy.mkdir()
    for f in tiny_disk.iterdir():
        shutil.copy(f, copy / f.name)
    storage = SqliteAcceptorStorage(copy / "acceptor.db", acceptor_id=0, cluster_id="paxos")
    storage.open()
    try:
        states = storage.load_all()
    finally:
        storage.close()
    assert len(acked) > 3
    for instance, value in acked.items():
        assert states[instance].accepted_value == value
