"""One key's sub-history as the search reads it: parallel lists per operation,
and the time-ordered list of calls and returns (see :mod:`.search`)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Final, TypeAlias

from paxos_testing.linearizability.history import Operation

PUT: Final = 0
GET: Final = 1
DELETE: Final = 2
CAS: Final = 3
KIND_CODE: Final = {"put": PUT, "get": GET, "delete": DELETE, "cas": CAS}


class Unread:
    """The one value standing for every written value that nothing reads."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<a value no get or cas observes>"


UNREAD: Final = Unread()

State: TypeAlias = bytes | Unread | None


class Operations:
    """One key's sub-history as parallel lists, indexed by position in it."""

    __slots__ = ("bit", "expected", "kind", "known", "output", "value")

    def __init__(self, history: Sequence[tuple[int, Operation]]) -> None:
        self.kind = [KIND_CODE[op.kind] for _, op in history]
        # Written values that no get returns and no cas compares against are
        # indistinguishable to the model, so they all become one value, UNREAD
        # (rule 3 in :mod:`.search`).
        observable: set[object] = {op.output for _, op in history if op.kind == "get"}
        observable.update(op.expected for _, op in history if op.kind == "cas")
        self.value: list[State] = [
            (op.value if op.value in observable else UNREAD) if op.kind in ("put", "cas") else None
            for _, op in history
        ]
        self.expected = [op.expected for _, op in history]
        self.output = [op.output for _, op in history]
        self.known = [op.status == "ok" for _, op in history]
        self.bit = [1 << i for i in range(len(history))]

    def apply_known(self, i: int, state: State, fresh: bool) -> tuple[bool, State]:
        """Whether known operation ``i`` can take effect next, on ``state``, and
        the state it leaves. ``fresh``: an unknown write just applied, which a
        blind write would hide (rule 2 in :mod:`.search`)."""
        kind = self.kind[i]
        if kind == GET:
            return self.output[i] == state, state
        if kind == PUT:
            return not fresh, self.value[i]
        if kind == DELETE:
            return not fresh, None
        if state == self.expected[i]:
            return self.output[i] is True, self.value[i]
        return self.output[i] is False, state


class Timeline:
    """Every call and return sorted by time, and the doubly linked list of the
    known-outcome operations' entries (see :mod:`.search`).

    A call sorts before a return at the same instant, so that touching
    intervals count as concurrent. Operations of unknown outcome have a call
    but no return, and are not linked: nothing forces them. An entry's number
    is its position in ``events`` (from 1), so comparing entry numbers
    compares times. Entry 0 is the head, ``len(events) + 1`` the tail.
    """

    __slots__ = ("call_entry", "entry_op", "events", "is_call", "match", "nxt", "prv")

    def __init__(self, history: Sequence[tuple[int, Operation]], known: Sequence[bool]) -> None:
        events: list[tuple[float, int, int]] = []
        for i, (_, op) in enumerate(history):
            events.append((op.invoke, 0, i))
            if op.status == "ok":
                assert op.complete is not None  # Operation.__post_init__ guarantees it
                events.append((op.complete, 1, i))
        events.sort()
        self.events = events
        tail = len(events) + 1
        self.nxt = [tail] * (tail + 1)
        self.prv = [0] * (tail + 1)
        self.entry_op = [-1] * (tail + 1)
        self.is_call = [False] * (tail + 1)
        self.match = [0] * (tail + 1)  # call entry -> its return entry
        self.call_entry = [0] * len(history)
        last = 0
        for entry, (_, is_return, i) in enumerate(events, start=1):
            self.entry_op[entry] = i
            if not is_return:
                self.call_entry[i] = entry
            if known[i]:
                self.nxt[last], self.prv[entry], last = entry, last, entry
                if is_return:
                    self.match[self.call_entry[i]] = entry
                else:
                    self.is_call[entry] = True
        self.nxt[last], self.prv[tail] = tail, last

    def unlink(self, call: int) -> None:
        """Take out call entry ``call`` and its return entry (an operation placed)."""
        nxt, prv = self.nxt, self.prv
        nxt[prv[call]] = nxt[call]
        prv[nxt[call]] = prv[call]
        ret = self.match[call]
        nxt[prv[ret]] = nxt[ret]
        prv[nxt[ret]] = prv[ret]

    def relink(self, call: int) -> None:
        """Undo :meth:`unlink` of ``call``, in the reverse order."""
        nxt, prv = self.nxt, self.prv
        ret = self.match[call]
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
        nxt[prv[call]] = call
        prv[nxt[call]] = call

    def pending_calls(self, stop: int) -> list[int]:
        """The operations whose call entries are linked before entry ``stop``."""
        pending = []
        entry = self.nxt[0]
        while entry != stop:
            if self.is_call[entry]:
                pending.append(self.entry_op[entry])
            entry = self.nxt[entry]
        return pending
