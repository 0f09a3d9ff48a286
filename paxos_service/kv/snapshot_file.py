"""A learner's snapshot on disk: one file, written atomically, checksummed.

Layout: a magic line, then the applied instance, the body's size and the
body's sha256 (big-endian, fixed width), then the body (the state machine's
snapshot bytes, :mod:`paxos_service.kv.snapshot`). The file is written to a
temporary name, fsynced, renamed over the old one, and the directory fsynced:
after a crash the file is the old snapshot or the new one, whole. Loading
checks the size and the checksum before anything trusts the body, and a
snapshot received from a peer is checked the same way before it is installed.
"""

from __future__ import annotations

import hashlib
import os
import struct
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from paxos_service.kv.snapshot import InvalidSnapshot, snapshot_of_file
from paxos_service.kv.store import Limits

_MAGIC = b"paxos-snapshot-file/1\n"
_HEADER = struct.Struct(">QQ32s")
#: Bytes of a snapshot sent in one chunk of FetchSnapshot.
CHUNK_BYTES = 256 * 1024


@dataclass(frozen=True)
class SnapshotInfo:
    """What a snapshot holds: every log instance <= ``applied_instance``."""

    applied_instance: int
    size: int
    sha256: bytes


def path_for(db_path: Path) -> Path:
    """Where the learner whose store is ``db_path`` keeps its snapshot."""
    return db_path.with_name(db_path.name + ".snapshot")


def describe(data: bytes, applied_instance: int) -> SnapshotInfo:
    return SnapshotInfo(applied_instance, len(data), hashlib.sha256(data).digest())


def verify(info: SnapshotInfo, data: bytes) -> None:
    """Raise :class:`InvalidSnapshot` unless ``data`` is the body ``info`` describes."""
    if len(data) != info.size:
        raise InvalidSnapshot(f"snapshot is {len(data)} bytes, its header says {info.size}")
    if hashlib.sha256(data).digest() != info.sha256:
        raise InvalidSnapshot("snapshot checksum mismatch: the bytes are damaged")


def write(path: Path, data: bytes, applied_instance: int) -> SnapshotInfo:
    """Replace the snapshot at ``path`` with ``data``, durably and atomically."""
    info = describe(data, applied_instance)
    temporary = path.with_name(path.name + ".tmp")
    with open(temporary, "wb") as out:
        out.write(_MAGIC + _HEADER.pack(info.applied_instance, info.size, info.sha256))
        out.write(data)
        out.flush()
        os.fsync(out.fileno())
    os.replace(temporary, path)
    fd = os.open(path.parent, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
    return info


def take(db_path: Path, limits: Limits, path: Path) -> SnapshotInfo:
    """Snapshot the store at ``db_path`` (read over a connection of its own,
    as of one moment) into ``path``. Runs in a process of its own
    (``runtime.worker_process``): only the paths go there and the small
    :class:`SnapshotInfo` comes back."""
    data, applied_instance = snapshot_of_file(db_path, limits)
    return write(path, data, applied_instance)


def read_info(path: Path) -> SnapshotInfo | None:
    """The header of the snapshot at ``path`` (None if there is none).
    Raises :class:`InvalidSnapshot` for a file that is not one."""
    try:
        with open(path, "rb") as f:
            return _read_header(f.read(len(_MAGIC) + _HEADER.size), path)
    except FileNotFoundError:
        return None


def load(path: Path) -> tuple[SnapshotInfo, bytes] | None:
    """The snapshot at ``path``, checked whole (None if there is none)."""
    try:
        with open(path, "rb") as f:
            info = _read_header(f.read(len(_MAGIC) + _HEADER.size), path)
            data = f.read()
    except FileNotFoundError:
        return None
    verify(info, data)
    return info, data


def chunks(path: Path, size: int = CHUNK_BYTES) -> Iterator[tuple[SnapshotInfo, int, bytes]]:
    """The snapshot at ``path`` as ``(info, offset, piece)``, read from one
    open file: a snapshot written meanwhile replaces the name, not these bytes."""
    with open(path, "rb") as f:
        info = _read_header(f.read(len(_MAGIC) + _HEADER.size), path)
        offset = 0
        while offset < info.size:
            piece = f.read(min(size, info.size - offset))
            if not piece:
                raise InvalidSnapshot(f"{path} ends at {offset} of {info.size} bytes")
            yield info, offset, piece
            offset += len(piece)


def _read_header(head: bytes, path: Path) -> SnapshotInfo:
    if len(head) != len(_MAGIC) + _HEADER.size or not head.startswith(_MAGIC):
        raise InvalidSnapshot(f"{path} is not a learner snapshot (bad header)")
    applied, size, digest = _HEADER.unpack(head[len(_MAGIC) :])
    return SnapshotInfo(applied, size, digest)
