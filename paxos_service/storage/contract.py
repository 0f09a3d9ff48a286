"""What an acceptor needs from stable storage.

The contract, from the acceptor's point of view:

* :meth:`AcceptorStorage.save` returns only after the batch is durable (on
  disk, fsynced). The acceptor sends no reply that depends on a write before
  that write's ``save`` has returned.
* A batch is atomic: all of its rows are stored, or none.
* :meth:`AcceptorStorage.load_all` either returns exactly what was saved or
  raises :class:`StorageCorrupt`; it never returns "empty" for a file it could
  not read, because an acceptor that forgets a promise breaks safety.
* :class:`IdentityStorage` (identity safety, see :mod:`paxos_service.node.identity`):
  the file's incarnation and status, and the incarnation seen for each peer.
  Every write is durable when the method returns, like ``save``.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from roles import AcceptorState, Ballot, RangePromise
from roles.recovery import AcceptorStatus, RecoveryPlan


class StorageError(Exception):
    """Storage failed while running (I/O error, disk full, ...)."""


class StorageCorrupt(StorageError):
    """The stored state cannot be read or does not make sense; refuse to start."""


class AcceptorStorage(Protocol):
    def load_all(self) -> dict[int, AcceptorState]:
        """Every instance's state, as last saved."""
        ...

    def load_newest(self, limit: int) -> tuple[dict[int, AcceptorState], int]:
        """The newest ``limit`` instances' states, and the highest instance
        left on disk only (0 when every instance was loaded)."""
        ...

    def load_states(
        self, first: int, last: int, *, accepted_only: bool = False, limit: int | None = None
    ) -> dict[int, AcceptorState]:
        """The saved states of the instances from ``first`` through ``last``
        (only those with an accepted value, the first ``limit`` of them)."""
        ...

    def summarize_through(self, last: int) -> tuple[Ballot, int]:
        """Over the instances through ``last``: the highest promised ballot and
        the highest instance with an accepted value (0: none)."""
        ...

    def load_range_promise(self) -> RangePromise:
        """The Multi-Paxos range promise, as last saved (none: ZERO ballot)."""
        ...

    #: The highest ``Accept.chosen_through`` saved (a hint, never a vote).
    chosen_through: int
    #: The highest ``Accept.compact_through`` saved: the log's votes through
    #: it are deleted, or being deleted (roles/compaction.py).
    compacted_through: int

    def save(
        self,
        writes: Sequence[tuple[int, AcceptorState]],
        range_promise: RangePromise | None = None,
        chosen_through: int | None = None,
        compacted_through: int | None = None,
    ) -> None:
        """Durably store ``(instance, state)`` pairs, and the range promise,
        ``chosen_through`` and ``compacted_through`` if given, in one transaction."""
        ...

    def truncate(self, through: int, limit: int) -> int:
        """Delete up to ``limit`` log instances' states <= ``through`` (a
        ``compacted_through`` already saved), lowest first; return how many."""
        ...

    def reclaim(self) -> int:
        """Give free space back to the file system, a bounded amount per
        call; return how much is still free (0: all of it went back)."""
        ...

    def disk_bytes(self) -> int:
        """Bytes the storage takes on disk."""
        ...

    def close(self) -> None: ...


class IdentityStorage(Protocol):
    acceptor_id: int
    cluster_id: str
    #: This file's incarnation: made at random when the file was created.
    incarnation: str
    status: AcceptorStatus
    #: A recovered acceptor never votes on instances <= this (0: none).
    no_vote_through: int

    def load_members(self) -> dict[int, str]:
        """The incarnation recorded for each peer acceptor id."""
        ...

    def record_member(self, acceptor_id: int, incarnation: str, *, replace: bool = False) -> str:
        """Record ``incarnation`` for ``acceptor_id`` if none is (always, with
        ``replace``); return the one recorded before ("" if none)."""
        ...

    def set_status(self, status: AcceptorStatus, *, expect_incarnation: str | None = None) -> bool:
        """Store ``status``; with ``expect_incarnation``, only if the file still
        has that incarnation. Returns whether it was stored."""
        ...

    def apply_recovery(self, incarnation: str, plan: RecoveryPlan, peers: dict[int, str]) -> None:
        """Become a rebuilt acceptor (status RECOVERING), in one transaction."""
        ...


class AcceptorFile(AcceptorStorage, IdentityStorage, Protocol):
    """Both: what the acceptor server runs on."""
