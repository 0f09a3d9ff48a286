"""A learner's snapshots: taking them beside the apply loop, and fetching one
from another learner when the acceptors compacted the log this one needs.

A snapshot is taken once ``retain_log_bytes`` of log was applied since the
last one, in a process of its own (``runtime.worker_process``: in a thread,
its encoding would hold the GIL in long stretches and stall the apply path),
over a connection of its own to the store, so applying goes on meanwhile. It
is written atomically and checksummed (:mod:`paxos_service.kv.snapshot_file`).
Fetching streams one from a peer's ``FetchSnapshot`` in chunks, checks each
chunk's header and offset, then the size and sha256 of the whole; the replica
installs it (:meth:`paxos_service.node.replica.Replica.install`).
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import Sequence
from concurrent.futures import Executor
from pathlib import Path
from typing import Any

import grpc

from paxos_service.core import metrics, runtime
from paxos_service.core.logger import get_logger
from paxos_service.kv import snapshot_file
from paxos_service.kv.snapshot import InvalidSnapshot
from paxos_service.kv.snapshot_file import SnapshotInfo
from paxos_service.kv.state_machine import KvStateMachine
from paxos_service.storage.sqlite_setup import disk_bytes
from paxos_service.transport.peers import describe_rpc_error
from paxos_service.v1 import paxos_pb2 as pb

#: What ``read()`` of a finished stream returns (missing from grpc-stubs).
_EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]
#: Longest one snapshot transfer from a peer may take.
FETCH_TIMEOUT = 600.0
#: Longest a transfer may wait for its next chunk: a peer cut off mid-way
#: (a partition, a paused process) must not hold the catch-up for minutes.
CHUNK_TIMEOUT = 10.0
#: Log a transfer's progress every this many bytes.
FETCH_PROGRESS_BYTES = 8 * 1024 * 1024


class Snapshots:
    """One learner's snapshot file, when to take the next, and its peers."""

    def __init__(
        self,
        machine: KvStateMachine,
        path: Path | None,
        latest: SnapshotInfo | None,
        retain_log_bytes: int,
        sources: Sequence[tuple[str, Any]] = (),
    ) -> None:
        self.machine = machine
        #: Where the snapshot is kept (None: this replica takes none).
        self.path = path
        self.latest = latest
        self.retain_log_bytes = retain_log_bytes
        #: Bytes of log applied since the last snapshot.
        self.log_bytes = 0
        #: Other learners, as (address, LearnerService stub).
        self.sources = list(sources)
        self._next_source = 0
        self._task: asyncio.Task[None] | None = None
        self._executor: Executor | None = None
        self._logger = get_logger()
        metrics.SNAPSHOT_INDEX.set(self.index)

    @property
    def index(self) -> int:
        """Every instance <= this is in the durable snapshot (0: none)."""
        return self.latest.applied_instance if self.latest is not None else 0

    def disk_bytes(self) -> int:
        """Bytes the store and the snapshot take on disk."""
        total = disk_bytes(self.machine.path)
        if self.path is not None:
            with contextlib.suppress(OSError):
                total += self.path.stat().st_size
        return total

    def maybe_take(self) -> None:
        """Start a snapshot once enough log was applied since the last one
        (one at a time; it runs beside the apply loop, not in it)."""
        if (
            self.path is None
            or self.log_bytes < self.retain_log_bytes
            or (self._task is not None and not self._task.done())
        ):
            return
        self.log_bytes = 0
        self._task = asyncio.get_running_loop().create_task(self._take(), name="replica-snapshot")

    async def close(self) -> None:
        if self._task is not None:
            await asyncio.gather(self._task, return_exceptions=True)
        if self._executor is not None:
            self._executor.shutdown(wait=False, cancel_futures=True)

    async def _take(self) -> None:
        """Write a snapshot of the store as it stands. A failure is logged
        and changes nothing: the previous snapshot stays, and the next try
        comes after another ``retain_log_bytes`` of log."""
        assert self.path is not None
        if self._executor is None:
            self._executor = runtime.worker_process("kv-snapshot")
        loop = asyncio.get_running_loop()
        started = time.perf_counter()
        try:
            machine = self.machine
            info = await loop.run_in_executor(
                self._executor, snapshot_file.take, machine.path, machine.limits, self.path
            )
        except Exception as exc:
            self._logger.error("taking a snapshot failed", error=repr(exc))
            return
        seconds = time.perf_counter() - started
        self.note(info)
        metrics.SNAPSHOT_SECONDS.observe(seconds)
        self._logger.info(
            "snapshot taken",
            applied_instance=info.applied_instance,
            bytes=info.size,
            seconds=round(seconds, 3),
        )

    def note(self, info: SnapshotInfo) -> None:
        """``info`` is durable: the latest snapshot if it is newer."""
        if self.latest is None or info.applied_instance >= self.latest.applied_instance:
            self.latest = info
        metrics.SNAPSHOT_INDEX.set(self.index)
        metrics.SNAPSHOT_BYTES.set(info.size)
        metrics.DISK_BYTES.set(self.disk_bytes())

    async def fetch(self, needed: int) -> tuple[str, SnapshotInfo, bytes] | None:
        """A checked snapshot holding every instance <= ``needed``, from the
        first peer (each in turn) that has one; None if none has."""
        if not self.sources:
            self._logger.error(
                "the acceptors compacted the log this learner needs, and it knows no other "
                "learner to fetch a snapshot from: start it with --learners",
                needed=needed,
            )
            return None
        for _ in range(len(self.sources)):
            address, stub = self.sources[self._next_source % len(self.sources)]
            self._next_source += 1
            try:
                info, data = await self._fetch(address, stub, needed)
            except grpc.aio.AioRpcError as exc:
                self._logger.warning(
                    "snapshot fetch failed", source=address, error=describe_rpc_error(address, exc)
                )
                continue
            except InvalidSnapshot as exc:
                self._logger.warning("snapshot refused", source=address, error=str(exc))
                continue
            except TimeoutError:
                self._logger.warning(
                    "snapshot fetch stalled", source=address, no_chunk_for=CHUNK_TIMEOUT
                )
                continue
            return address, info, data
        return None

    async def _fetch(self, address: str, stub: Any, needed: int) -> tuple[SnapshotInfo, bytes]:
        self._logger.info("fetching a snapshot", source=address, min_instance=needed)
        request = pb.FetchSnapshotRequest(min_instance=needed)
        call = stub.FetchSnapshot(request, timeout=FETCH_TIMEOUT)
        try:
            return await self._receive(address, call, needed)
        finally:
            call.cancel()  # a no-op once it ended; stops a stalled one

    async def _receive(self, address: str, call: Any, needed: int) -> tuple[SnapshotInfo, bytes]:
        info: SnapshotInfo | None = None
        parts: list[bytes] = []
        received = 0
        next_report = FETCH_PROGRESS_BYTES
        while True:
            chunk = await asyncio.wait_for(call.read(), CHUNK_TIMEOUT)
            if chunk is _EOF:
                break
            header = SnapshotInfo(chunk.applied_instance, chunk.total_bytes, bytes(chunk.sha256))
            if info is None:
                info = header
                if info.applied_instance < needed:
                    raise InvalidSnapshot(
                        f"{address} sent a snapshot through {info.applied_instance}, "
                        f"not {needed} or later"
                    )
            if header != info or chunk.offset != received:
                raise InvalidSnapshot(f"{address} sent chunks of two snapshots, or out of order")
            received += len(chunk.data)
            if received > info.size:
                raise InvalidSnapshot(f"{address} sent more than the {info.size} bytes announced")
            parts.append(bytes(chunk.data))
            metrics.SNAPSHOT_TRANSFER_BYTES.inc(len(chunk.data))
            if received >= next_report:
                next_report += FETCH_PROGRESS_BYTES
                self._logger.info(
                    "fetching a snapshot", source=address, received=received, total=info.size
                )
        if info is None:
            raise InvalidSnapshot(f"{address} sent no snapshot")
        data = b"".join(parts)
        snapshot_file.verify(info, data)
        return info, data
