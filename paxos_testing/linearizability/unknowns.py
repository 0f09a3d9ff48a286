"""The operations of unknown outcome in the search of one key: classes of
interchangeable ones, and which of them are worth applying next (rules 1 to 4
in :mod:`.search`)."""

from __future__ import annotations

import bisect

from paxos_testing.linearizability.subhistory import CAS, GET, Operations, State, Timeline


class UnknownClasses:
    """The operations of unknown outcome, as classes of interchangeable ones,
    and which of them are worth applying next.

    Unknown operations with the same call are interchangeable once invoked,
    so the search applies a class, not an operation. Using k members of a
    class means using its first k by invoke, whichever k were really meant;
    the memo records them as bits. Classes are numbered by invoke.
    """

    __slots__ = (
        "_line",
        "_ops",
        "bits",
        "cas_classes",
        "cas_leading_to",
        "chain_starts",
        "entries",
        "members",
        "observers",
        "used",
        "value",
        "write_class",
    )

    def __init__(self, ops: Operations, line: Timeline) -> None:
        self._ops = ops
        self._line = line
        class_of_call: dict[tuple[int, State, State], int] = {}
        self.members: list[list[int]] = []  # by invoke
        self.entries: list[list[int]] = []  # their call entries, ascending
        for _, _, i in line.events:
            if ops.known[i] or ops.kind[i] == GET:  # an unknown get changes nothing
                continue
            kind = ops.kind[i]
            call = (kind, ops.value[i], ops.expected[i] if kind == CAS else None)
            c = class_of_call.setdefault(call, len(self.members))
            if c == len(self.members):
                self.members.append([])
                self.entries.append([])
            self.members[c].append(i)
            self.entries[c].append(line.call_entry[i])
        # The state each class leaves (a cas class only applies when it swaps).
        self.value = [ops.value[members[0]] for members in self.members]
        self.bits = [[ops.bit[i] for i in members] for members in self.members]
        self.used = [0] * len(self.members)
        self.write_class: dict[object, int] = {}  # put and delete classes by the state they leave
        self.cas_classes: dict[object, list[int]] = {}  # cas classes by expected value
        self.cas_leading_to: dict[object, list[int]] = {}  # cas classes by the state they leave
        for c, members in enumerate(self.members):
            if ops.kind[members[0]] == CAS:
                self.cas_classes.setdefault(ops.expected[members[0]], []).append(c)
                self.cas_leading_to.setdefault(self.value[c], []).append(c)
            else:
                self.write_class[self.value[c]] = c
        # Blind-write classes whose value some unknown cas expects: a chain may need them.
        self.chain_starts = [
            c for value, c in self.write_class.items() if value in self.cas_classes
        ]
        # The known operations that observe each value, to tell when nothing
        # left to place can observe it any more.
        self.observers: dict[object, int] = {}
        for i, known in enumerate(ops.known):
            if known and ops.kind[i] in (GET, CAS):
                observed = ops.output[i] if ops.kind[i] == GET else ops.expected[i]
                self.observers[observed] = self.observers.get(observed, 0) | ops.bit[i]

    def candidates(self, state: State, fresh: bool, frontier: int, known_mask: int) -> list[int]:
        """The unknown classes worth applying next, before return entry `frontier`.

        Applying an unknown write is only worth it if it changes the state
        and the very next operation observes the new state (rule 2 in
        :mod:`.search`). That next operation is a known get or cas whose
        call is linked before `frontier`, or an unknown cas invoked before it.
        """
        reads, unblocks_refusal = self._pending_reads(state, frontier)
        # None: any new state is observed (by the pending cas that did not swap).
        observable = None if unblocks_refusal else self._observable(reads, frontier)
        candidates = [
            c
            for c in self.cas_classes.get(state, ())
            if self.value[c] != state
            and self._available(c, frontier)
            and (observable is None or self.value[c] in observable)
        ]
        if fresh:
            return candidates  # a blind write now would hide the one just applied
        if observable is None:
            candidates += self._writes_unblocking_refusal(state, frontier, known_mask)
        else:
            candidates += self._writes_observed(state, frontier, reads, observable)
        candidates.sort()  # classes are numbered by invoke: a reproducible order
        return candidates

    def _available(self, c: int, frontier: int) -> bool:
        """Whether class ``c`` has a member invoked before ``frontier`` not used yet."""
        return self.used[c] < bisect.bisect_left(self.entries[c], frontier)

    def _pending_reads(self, state: State, frontier: int) -> tuple[set[object], bool]:
        """The states that a known get or swapping cas linked before
        ``frontier`` needs, and whether a cas there that did not swap could
        not have failed before a write, on ``state`` (it then observes a write:
        otherwise the write can move after it without changing any state)."""
        ops, line = self._ops, self._line
        reads: set[object] = set()
        unblocks_refusal = False
        entry = line.nxt[0]
        while entry != frontier:
            if line.is_call[entry]:
                i = line.entry_op[entry]
                if ops.kind[i] == GET:
                    reads.add(ops.output[i])
                elif ops.kind[i] == CAS:
                    if ops.output[i]:
                        reads.add(ops.expected[i])
                    elif ops.expected[i] == state:
                        unblocks_refusal = True
            entry = line.nxt[entry]
        return reads, unblocks_refusal

    def _observable(self, reads: set[object], frontier: int) -> set[object]:
        """The states an operation pending now could observe next: those it
        reads, and those a chain of available unknown cas operations turns
        into one it reads."""
        observable: set[object] = set(reads)
        todo = list(reads)
        while todo:
            for c in self.cas_leading_to.get(todo.pop(), ()):
                expected = self._ops.expected[self.members[c][0]]
                if expected not in observable and self._available(c, frontier):
                    observable.add(expected)
                    todo.append(expected)
        return observable

    def _writes_unblocking_refusal(self, state: State, frontier: int, known_mask: int) -> list[int]:
        """Any blind write unblocks the refusal. Of those whose value nothing
        left to place observes, one is as good as another (rule 4 in
        :mod:`.search`): only the first is tried."""
        writes = []
        spare = -1
        for value, c in self.write_class.items():
            if value == state or not self._available(c, frontier):
                continue
            if self._dead(value, known_mask):
                if spare < 0 or c < spare:
                    spare = c
            else:
                writes.append(c)
        if spare >= 0:
            writes.append(spare)
        return writes

    def _writes_observed(
        self, state: State, frontier: int, reads: set[object], observable: set[object]
    ) -> list[int]:
        """The blind writes of a value a pending operation reads, or that
        starts a chain of unknown cas operations, that change the state."""
        wanted = {self.write_class[value] for value in reads if value in self.write_class}
        wanted.update(self.chain_starts)
        return [
            c
            for c in wanted
            if self.value[c] != state
            and self._available(c, frontier)
            and self.value[c] in observable
        ]

    def _dead(self, value: object, known_mask: int) -> bool:
        """Whether no operation left to place can ever observe `value`,
        directly or after a chain of unknown cas operations."""
        todo, seen = [value], {value}
        while todo:
            current = todo.pop()
            if self.observers.get(current, 0) & ~known_mask:
                return False
            for c in self.cas_classes.get(current, ()):
                if self.value[c] not in seen and self.used[c] < len(self.bits[c]):
                    seen.add(self.value[c])
                    todo.append(self.value[c])
        return True
