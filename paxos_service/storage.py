"""What an acceptor needs from stable storage.

The contract, from the acceptor's point of view:

* :meth:`AcceptorStorage.save` returns only after the batch is durable (on
  disk, fsynced). The acceptor sends no reply that depends on a write before
  that write's ``save`` has returned.
* A batch is atomic: all of its rows are stored, or none.
* :meth:`AcceptorStorage.load_all` either returns exactly what was saved or
  raises :class:`StorageCorrupt`; it never returns "empty" for a file it could
  not read, because an acceptor that forgets a promise breaks safety.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Protocol

from roles import AcceptorState, RangePromise


class StorageError(Exception):
    """Storage failed while running (I/O error, disk full, ...)."""


class StorageCorrupt(StorageError):
    """The stored state cannot be read or does not make sense; refuse to start."""


class AcceptorStorage(Protocol):
    def load_all(self) -> dict[int, AcceptorState]:
        """Every instance's state, as last saved."""
        ...

    def load_range_promise(self) -> RangePromise:
        """The Multi-Paxos range promise, as last saved (none: ZERO ballot)."""
        ...

    def save(
        self,
        writes: Sequence[tuple[int, AcceptorState]],
        range_promise: RangePromise | None = None,
    ) -> None:
        """Durably store ``(instance, state)`` pairs, and the range promise if
        given, in one transaction."""
        ...

    def close(self) -> None: ...
