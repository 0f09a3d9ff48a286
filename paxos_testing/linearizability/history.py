"""What a client saw: one :class:`Operation` per call, checked on creation so
that a history that cannot have been observed is refused (:class:`HistoryError`)
before any search. What each field means is in :mod:`paxos_testing.linearizability`."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Final, Literal, TypeAlias

Kind: TypeAlias = Literal["put", "get", "delete", "cas"]
Status: TypeAlias = Literal["ok", "fail", "unknown"]

_KINDS: Final = ("put", "get", "delete", "cas")
_STATUSES: Final = ("ok", "fail", "unknown")


class HistoryError(ValueError):
    """An operation or a history file does not describe a possible observation."""


@dataclass(frozen=True, kw_only=True, slots=True)
class Operation:
    """One client operation as the client observed it.

    ``value`` is the value a put or cas writes, ``expected`` the value a cas
    compares against (``None``: the key must be absent). ``output`` is the
    reply: for a get the value read (``None``: absent), for a cas whether it
    swapped, for put and delete ``None``. For operations whose status is not
    ``"ok"`` the output is ignored.
    """

    client_id: int
    kind: Kind
    key: str
    value: bytes | None = None
    expected: bytes | None = None
    invoke: float
    complete: float | None
    status: Status
    output: bytes | bool | None = None

    def __post_init__(self) -> None:
        if self.kind not in _KINDS:
            raise HistoryError(f"unknown kind {self.kind!r}; expected one of {_KINDS}")
        if self.status not in _STATUSES:
            raise HistoryError(f"unknown status {self.status!r}; expected one of {_STATUSES}")
        if not isinstance(self.key, str):
            raise HistoryError(f"key must be str, got {type(self.key).__name__}")
        if isinstance(self.invoke, bool) or not isinstance(self.invoke, int | float):
            raise HistoryError(f"invoke must be a number, got {self.invoke!r}")
        if not math.isfinite(self.invoke):
            raise HistoryError(f"invoke must be finite, got {self.invoke!r}")
        if self.complete is not None and (
            isinstance(self.complete, bool)
            or not isinstance(self.complete, int | float)
            or math.isnan(self.complete)
        ):
            raise HistoryError(f"complete must be a number or None, got {self.complete!r}")
        if self.kind in ("put", "cas") and not isinstance(self.value, bytes):
            raise HistoryError(f"a {self.kind} needs a bytes value, got {self.value!r}")
        if self.kind == "cas" and not isinstance(self.expected, bytes | None):
            raise HistoryError(f"cas expected must be bytes or None, got {self.expected!r}")
        if self.status != "ok":
            return
        # Only a completed operation's timing and reply constrain the search,
        # so only they must make sense.
        if self.complete is None or not math.isfinite(self.complete):
            raise HistoryError(f"an ok operation needs a finite complete time: {self}")
        if self.complete < self.invoke:
            raise HistoryError(f"operation completes before it is invoked: {self}")
        if self.kind == "get" and not isinstance(self.output, bytes | None):
            raise HistoryError(f"a get's output must be bytes or None, got {self.output!r}")
        if self.kind == "cas" and not isinstance(self.output, bool):
            raise HistoryError(f"a cas's output must be True or False, got {self.output!r}")
        if self.kind in ("put", "delete") and self.output is not None:
            raise HistoryError(f"a {self.kind}'s output must be None, got {self.output!r}")
