"""Linearizability checking for key-value histories.

A history is what concurrent clients saw: for every operation, when it was
invoked, when (or whether) its reply came, and what the reply said. The
history is linearizable if every operation can be given a single point in
time, somewhere between its invoke and its reply, such that applying the
operations one at a time in the order of those points, to one sequential
key-value map, produces exactly the replies the clients saw (Herlihy and
Wing, "Linearizability: A Correctness Condition for Concurrent Objects",
1990).

The rules, in one place:

* The sequential model of one key. The state is ``bytes`` or ``None``
  (absent); every key starts absent.

  ========  ===========================  =================================
  kind      effect on the state          reply the model allows
  ========  ===========================  =================================
  put       state = value                ``None``
  get       unchanged                    exactly the state
  delete    state = None                 ``None``
  cas       if state == expected:        ``True`` when it swapped,
            state = value, else          ``False`` when it did not
            unchanged                    (``expected=None``: key absent)
  ========  ===========================  =================================

* ``status="ok"``: the reply came at ``complete``. The operation took effect
  exactly once, somewhere in ``[invoke, complete]``.
* ``status="fail"``: the operation definitely did not take effect (the
  server refused it before doing anything). The checker drops it.
* ``status="unknown"``: the client gave up (timeout, crash, partition). The
  operation may have taken effect at any time after ``invoke``, even long
  after the client stopped waiting, or never. Its reply is unknown, so any
  reply is accepted; ``complete`` is ignored and treated as +infinity. An
  unknown ``get`` has no effect and is dropped.
* Time: an operation A precedes B in real time iff ``A.complete <
  B.invoke``. Intervals that merely touch (``A.complete == B.invoke``) count
  as concurrent, so a clock that cannot tell two instants apart never makes
  a history look worse than it is. Times may be on any monotonic scale, but
  all clients must share it.

How the search works:

* Keys are independent (the locality of linearizability, Herlihy and Wing;
  P-compositionality, Horn and Kroening 2015), so each key's sub-history is checked on its own
  and the first failing key is reported: first any key with a read of a
  value that no operation could have written by then (a linear scan that
  needs no search), then the first key, in sorted order, that the search
  rejects.
* Per key, the search is Wing and Gong's (1993) depth-first search over
  "which operation takes effect next", with Lowe's (2017) memoisation: a
  configuration is the set of operations placed so far plus the model
  state, and reaching a configuration already searched (which therefore
  failed) prunes the branch. As in Porcupine's ``checkSingle``, the
  known-outcome operations form a doubly linked list of call and return
  entries sorted by time. The candidates to go next are the calls before
  the first return entry, placing one unlinks its two entries (restored on
  backtrack), and so a step costs O(concurrency). The search is a loop
  over an explicit stack, never recursion.
* An operation of unknown outcome has no return entry, so nothing forces
  it; the history is accepted once every known-outcome operation is placed.
  Each configuration tries the known-outcome candidates first and only
  then the unknown ones, under four rules. Each rule holds because any
  linearization can be rewritten into one that obeys it, by dropping an
  unknown operation (it may never have taken effect) or moving it later
  (it may take effect at any time after its invoke), so the check stays
  exact:

  1. Interchangeable: once invoked, unknown operations with the same call
     (kind, value, expected) are interchangeable, so they form one class
     and the memo records how many of each class were used. A
     configuration that used at least as many of every class as one that
     already failed, with the same known operations placed and the same
     state, is pruned.
  2. Observed: an unknown write is applied only if it changes the state
     and the very next operation observes the new state: a get that
     returns it, a cas that compares equal to it (possibly a chain of
     unknown cas operations ending in one of these), or a cas that did not
     swap but would have swapped on the state before the write.
  3. Unread values: written values that no get returns and no cas expects
     cannot be told apart by the model, so the search treats them as one.
  4. Spare writes: when any change of state will do (to let a pending cas
     fail), one write of a value that nothing left to place can observe is
     as good as another, so only one of them is tried.

  Checking histories with unknown outcomes is NP-complete in general
  (Gibbons and Korach, 1997, for registers). The search stays fast when
  every write writes a value nothing else writes, because then each read
  names the write it saw; with a few values reused by many writes of
  unknown outcome, proving a history non-linearizable can exhaust the
  budget. Give chaos histories unique values.

The JSONL format (:func:`history_to_jsonl`, :func:`history_from_jsonl`): one
JSON object per line, with the fields of :class:`Operation`. Byte strings
(``value``, ``expected`` and a get's ``output``) are written as
``{"utf8": "text"}`` when they are valid UTF-8 and as ``{"b64": "..."}``
(standard base64) otherwise; ``null`` is ``None``. A cas's ``output`` is a
JSON boolean. ``complete`` is a number, or ``null`` when the outcome is
unknown. Blank lines are ignored.

Run ``python -m paxos_service.linearizability HISTORY.jsonl`` to check a
saved history: exit status 0 means linearizable, 1 not linearizable, 2
unknown (the search budget ran out, or the file could not be read).
"""

from __future__ import annotations

import argparse
import base64
import binascii
import bisect
import json
import math
import os
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, Literal, TypeAlias

__all__ = [
    "CheckResult",
    "HistoryError",
    "Kind",
    "Operation",
    "Status",
    "check_history",
    "history_from_jsonl",
    "history_to_jsonl",
    "main",
]

Kind: TypeAlias = Literal["put", "get", "delete", "cas"]
Status: TypeAlias = Literal["ok", "fail", "unknown"]

_KINDS: Final = ("put", "get", "delete", "cas")
_STATUSES: Final = ("ok", "fail", "unknown")

DEFAULT_TIMEOUT_SECONDS: Final = 30.0

# How many search steps run between two looks at the clock.
_CLOCK_EVERY: Final = 1024
# How many operations of the longest linearizable prefix an explanation shows.
_PREFIX_SHOWN: Final = 12


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


@dataclass(frozen=True)
class CheckResult:
    """The verdict on a whole history.

    ``linearizable`` is True only when every key was proved linearizable. A
    search that ran out of budget is reported as not linearizable with
    ``timed_out`` set: the history was neither proved good nor proved bad.
    """

    linearizable: bool
    keys_checked: int
    operations_checked: int
    bad_key: str | None
    explanation: str
    timed_out: bool


# The checker -----------------------------------------------------------------

_PUT: Final = 0
_GET: Final = 1
_DELETE: Final = 2
_CAS: Final = 3
_KIND_CODE: Final = {"put": _PUT, "get": _GET, "delete": _DELETE, "cas": _CAS}


class _Unread:
    """The one value standing for every written value that nothing reads."""

    __slots__ = ()

    def __repr__(self) -> str:
        return "<a value no get or cas observes>"


_UNREAD: Final = _Unread()

_State: TypeAlias = bytes | _Unread | None


@dataclass(frozen=True)
class _Failure:
    """Where the deepest branch of a failed search got stuck."""

    prefix: list[int]  # positions (in the key's sub-history) in linearization order
    stuck: int  # the operation whose reply arrived before it could be placed
    candidates: list[int]  # known-outcome operations invoked by then and not placed


class _Timeout(Exception):
    pass


def check_history(
    ops: Iterable[Operation], *, timeout_seconds: float = DEFAULT_TIMEOUT_SECONDS
) -> CheckResult:
    """Decide whether ``ops`` is a linearizable history of a key-value map.

    ``timeout_seconds`` bounds the whole check. When it runs out the result
    has ``timed_out=True`` and ``linearizable=False``.
    """
    deadline = time.monotonic() + timeout_seconds
    by_key: dict[str, list[tuple[int, Operation]]] = {}
    ignored = 0
    for position, op in enumerate(ops):
        if op.status == "fail" or (op.status == "unknown" and op.kind == "get"):
            ignored += 1
            continue
        by_key.setdefault(op.key, []).append((position, op))

    keys = sorted(by_key)
    # A read of a value that nothing wrote in time needs no search, and
    # finding it first means a search that runs out of budget on another key
    # cannot hide it.
    scanned = 0
    for keys_scanned, key in enumerate(keys, start=1):
        history = by_key[key]
        scanned += len(history)
        bad_read = _unwritten_read(history)
        if bad_read is not None:
            return CheckResult(
                linearizable=False,
                keys_checked=keys_scanned,
                operations_checked=scanned,
                bad_key=key,
                explanation=_explain_unwritten_read(key, history, bad_read),
                timed_out=False,
            )

    keys_checked = 0
    operations_checked = 0
    for key in keys:
        history = by_key[key]
        try:
            failure = _check_key(history, deadline)
        except _Timeout:
            return CheckResult(
                linearizable=False,
                keys_checked=keys_checked,
                operations_checked=operations_checked,
                bad_key=None,
                explanation=(
                    f"unknown (budget exhausted): the {timeout_seconds:g} s search budget ran "
                    f"out while checking key {key!r} ({len(history)} operations); "
                    f"{keys_checked} of {len(keys)} keys were linearizable before it"
                ),
                timed_out=True,
            )
        keys_checked += 1
        operations_checked += len(history)
        if failure is not None:
            return CheckResult(
                linearizable=False,
                keys_checked=keys_checked,
                operations_checked=operations_checked,
                bad_key=key,
                explanation=_explain_failure(key, history, failure),
                timed_out=False,
            )
    ignored_note = f"; {ignored} ignored (failed, or reads of unknown outcome)" if ignored else ""
    return CheckResult(
        linearizable=True,
        keys_checked=keys_checked,
        operations_checked=operations_checked,
        bad_key=None,
        explanation=(
            f"linearizable: {operations_checked} operations on {keys_checked} keys{ignored_note}"
        ),
        timed_out=False,
    )


def _unwritten_read(history: Sequence[tuple[int, Operation]]) -> int | None:
    """The first completed get or swapping cas that observed a value which no
    operation on the key could have written before it returned, if any."""
    first_write: dict[bytes | None, float] = {}
    for _, op in history:
        may_write = op.kind == "put" or (
            op.kind == "cas" and (op.status != "ok" or op.output is True)
        )
        if may_write and op.invoke < first_write.get(op.value, math.inf):
            first_write[op.value] = op.invoke
    for i, (_, op) in enumerate(history):
        if op.status != "ok" or op.complete is None:
            continue
        if op.kind == "get" and isinstance(op.output, bytes):
            observed: bytes = op.output
        elif op.kind == "cas" and op.output is True and op.expected is not None:
            observed = op.expected
        else:
            continue
        if first_write.get(observed, math.inf) > op.complete:
            return i
    return None


def _check_key(history: Sequence[tuple[int, Operation]], deadline: float) -> _Failure | None:
    """Search one key's sub-history; None means linearizable.

    Raises :class:`_Timeout` once ``deadline`` (a ``time.monotonic`` value)
    has passed.
    """
    if time.monotonic() >= deadline:
        raise _Timeout

    n = len(history)
    op_kind = [_KIND_CODE[op.kind] for _, op in history]
    # Written values that no get returns and no cas compares against are
    # indistinguishable to the model, so they all become one value, _UNREAD
    # (rule 3 in the module docstring).
    observable: set[object] = {op.output for _, op in history if op.kind == "get"}
    observable.update(op.expected for _, op in history if op.kind == "cas")
    op_value: list[_State] = [
        (op.value if op.value in observable else _UNREAD) if op.kind in ("put", "cas") else None
        for _, op in history
    ]
    op_expected = [op.expected for _, op in history]
    op_output = [op.output for _, op in history]
    op_known = [op.status == "ok" for _, op in history]
    op_bit = [1 << i for i in range(n)]

    # Every call and return sorted by time, a call before a return at the
    # same instant so that touching intervals count as concurrent. Operations
    # of unknown outcome have a call but no return: nothing forces them.
    events: list[tuple[float, int, int]] = []
    for i, (_, op) in enumerate(history):
        events.append((op.invoke, 0, i))
        if op.status == "ok":
            assert op.complete is not None  # Operation.__post_init__ guarantees it
            events.append((op.complete, 1, i))
    events.sort()

    # The doubly linked list holds the entries of known-outcome operations.
    # An entry's number is its position in `events` (from 1), so comparing
    # entry numbers compares times. Entry 0 is the head, m + 1 the tail.
    m = len(events)
    tail = m + 1
    nxt = [tail] * (m + 2)
    prv = [0] * (m + 2)
    entry_op = [-1] * (m + 2)
    is_call = [False] * (m + 2)
    match = [0] * (m + 2)  # call entry -> its return entry
    call_entry = [0] * n
    last = 0
    for entry, (_, is_return, i) in enumerate(events, start=1):
        entry_op[entry] = i
        if not is_return:
            call_entry[i] = entry
        if op_known[i]:
            nxt[last], prv[entry], last = entry, last, entry
            if is_return:
                match[call_entry[i]] = entry
            else:
                is_call[entry] = True
    nxt[last], prv[tail] = tail, last

    # Unknown operations with the same call are interchangeable once invoked
    # (rule 1 in the module docstring), so they form classes and the search
    # applies a class, not an operation. Using k members of a class means
    # using its first k by invoke, whichever k were really meant; the memo
    # records them as bits, so "fewer used of every class" is "subset".
    class_of_call: dict[tuple[int, _State, _State], int] = {}
    class_ops: list[list[int]] = []  # members, by invoke
    class_entries: list[list[int]] = []  # their call entries, ascending
    for _, _, i in events:
        if op_known[i] or op_kind[i] == _GET:  # an unknown get changes nothing
            continue
        kind = op_kind[i]
        call = (kind, op_value[i], op_expected[i] if kind == _CAS else None)
        c = class_of_call.setdefault(call, len(class_ops))
        if c == len(class_ops):
            class_ops.append([])
            class_entries.append([])
        class_ops[c].append(i)
        class_entries[c].append(call_entry[i])
    class_kind = [op_kind[members[0]] for members in class_ops]
    # The state each class leaves (a cas class only applies when it swaps).
    class_value = [op_value[members[0]] for members in class_ops]
    class_bits = [[op_bit[i] for i in members] for members in class_ops]
    class_used = [0] * len(class_ops)
    write_class: dict[object, int] = {}  # put and delete classes by the state they leave
    cas_classes: dict[object, list[int]] = {}  # cas classes by expected value
    cas_leading_to: dict[object, list[int]] = {}  # cas classes by the state they leave
    for c, members in enumerate(class_ops):
        if class_kind[c] == _CAS:
            cas_classes.setdefault(op_expected[members[0]], []).append(c)
            cas_leading_to.setdefault(class_value[c], []).append(c)
        else:
            write_class[class_value[c]] = c
    # Blind-write classes whose value some unknown cas expects: a chain may need them.
    chain_starts = [c for value, c in write_class.items() if value in cas_classes]
    # The known operations that observe each value, to tell when nothing
    # left to place can observe it any more.
    observers: dict[object, int] = {}
    for i in range(n):
        if op_known[i] and op_kind[i] in (_GET, _CAS):
            observed_value = op_output[i] if op_kind[i] == _GET else op_expected[i]
            observers[observed_value] = observers.get(observed_value, 0) | op_bit[i]

    def unknown_candidates(state: _State, fresh: bool, frontier: int, known_mask: int) -> list[int]:
        """The unknown classes worth applying next, before return entry `frontier`.

        Applying an unknown write is only worth it if it changes the state
        and the very next operation observes the new state (rule 2 in the
        module docstring). That next operation is a known get or cas whose
        call is linked before `frontier`, or an unknown cas invoked before it.
        """

        def available(c: int) -> bool:
            return class_used[c] < bisect.bisect_left(class_entries[c], frontier)

        reads: set[object] = set()  # states that a pending get or swapping cas needs
        # A pending cas that did not swap observes a write only if it could
        # not have failed before it, on the current state. Otherwise the
        # write can move after it without changing any state.
        unblocks_refusal = False
        entry = nxt[0]
        while entry != frontier:
            if is_call[entry]:
                i = entry_op[entry]
                if op_kind[i] == _GET:
                    reads.add(op_output[i])
                elif op_kind[i] == _CAS:
                    if op_output[i]:
                        reads.add(op_expected[i])
                    elif op_expected[i] == state:
                        unblocks_refusal = True
            entry = nxt[entry]

        # The states an operation pending now could observe next: those it
        # reads, and those a chain of available unknown cas operations turns
        # into one it reads.
        observable: set[object] = set(reads)
        todo = [] if unblocks_refusal else list(reads)
        while todo:
            for c in cas_leading_to.get(todo.pop(), ()):
                expected = op_expected[class_ops[c][0]]
                if expected not in observable and available(c):
                    observable.add(expected)
                    todo.append(expected)

        def observed(value: object) -> bool:
            return unblocks_refusal or value in observable

        def dead(value: object) -> bool:
            """Whether no operation left to place can ever observe `value`,
            directly or after a chain of unknown cas operations."""
            todo, seen = [value], {value}
            while todo:
                value = todo.pop()
                if observers.get(value, 0) & ~known_mask:
                    return False
                for c in cas_classes.get(value, ()):
                    if class_value[c] not in seen and class_used[c] < len(class_bits[c]):
                        seen.add(class_value[c])
                        todo.append(class_value[c])
            return True

        candidates = [
            c
            for c in cas_classes.get(state, ())
            if class_value[c] != state and available(c) and observed(class_value[c])
        ]
        if fresh:
            return candidates  # a blind write now would hide the one just applied
        if unblocks_refusal:
            # Any blind write unblocks the refusal. Of those whose value
            # nothing left to place observes, one is as good as another
            # (rule 4 in the module docstring).
            spare = -1
            for value, c in write_class.items():
                if value == state or not available(c):
                    continue
                if dead(value):
                    if spare < 0 or c < spare:
                        spare = c
                else:
                    candidates.append(c)
            if spare >= 0:
                candidates.append(spare)
        else:
            wanted = {write_class[value] for value in reads if value in write_class}
            wanted.update(chain_starts)
            for c in wanted:
                value = class_value[c]
                if value != state and available(c) and observed(value):
                    candidates.append(c)
        candidates.sort()  # classes are numbered by invoke: a reproducible order
        return candidates

    remaining_known = sum(op_known)
    state: _State = None  # every key starts absent
    # True right after an unknown write: the next operation must observe the
    # state, or that write was pointless (rule 2 in the module docstring).
    fresh = False
    known_mask = 0
    unknown_mask = 0
    # For each (known operations placed, state): the unknown class members
    # used (as bits) in the configurations already searched, all of which
    # failed; first those with fresh False, then those with fresh True.
    cache: dict[tuple[int, _State], tuple[list[int], list[int]]] = {}

    def novel(known: int, new_state: _State, unknown: int, new_fresh: bool) -> bool:
        """Record the configuration; False if one that dominates it failed."""
        seen = cache.get((known, new_state))
        if seen is None:
            cache[(known, new_state)] = ([], [unknown]) if new_fresh else ([unknown], [])
            return True
        unused = ~unknown
        for used in seen[0]:
            if not used & unused:
                return False
        if new_fresh:
            for used in seen[1]:
                if not used & unused:
                    return False
        seen[1 if new_fresh else 0].append(unknown)
        return True

    # One frame per operation placed: what it was, and where to resume the
    # search of the configuration before it.
    stack_op: list[int] = []
    stack_class: list[int] = []  # -1 for a known operation
    stack_state: list[_State] = []
    stack_fresh: list[bool] = []
    stack_candidates: list[list[int]] = []
    stack_next: list[int] = []
    stack_frontier: list[int] = []
    best: _Failure | None = None

    # Each configuration is searched in two passes: first the known
    # operations linked before the first return entry (`frontier`), then
    # the unknown classes worth applying there.
    entry = nxt[0]
    unknown_pass = False
    frontier = 0
    no_candidates: list[int] = []
    candidates = no_candidates
    next_candidate = 0
    steps = 0
    while remaining_known:
        steps += 1
        if steps % _CLOCK_EVERY == 0 and time.monotonic() >= deadline:
            raise _Timeout

        if not unknown_pass:
            if not is_call[entry]:
                frontier = entry
                candidates = (
                    unknown_candidates(state, fresh, frontier, known_mask) if class_ops else []
                )
                next_candidate = 0
                unknown_pass = True
                continue
            i = entry_op[entry]
            kind = op_kind[i]
            new_state: _State
            if kind == _GET:
                ok = op_output[i] == state
                new_state = state
            elif kind == _PUT:
                ok = not fresh
                new_state = op_value[i]
            elif kind == _DELETE:
                ok = not fresh
                new_state = None
            elif state == op_expected[i]:
                ok = op_output[i] is True
                new_state = op_value[i]
            else:
                ok = op_output[i] is False
                new_state = state
            if ok and novel(known_mask | op_bit[i], new_state, unknown_mask, False):
                stack_op.append(i)
                stack_class.append(-1)
                stack_state.append(state)
                stack_fresh.append(fresh)
                stack_candidates.append(no_candidates)
                stack_next.append(0)
                stack_frontier.append(0)
                state = new_state
                fresh = False
                known_mask |= op_bit[i]
                remaining_known -= 1
                # Unlink the call entry and its return entry.
                nxt[prv[entry]] = nxt[entry]
                prv[nxt[entry]] = prv[entry]
                ret = match[entry]
                nxt[prv[ret]] = nxt[ret]
                prv[nxt[ret]] = prv[ret]
                entry = nxt[0]
                continue
            entry = nxt[entry]
            continue

        if next_candidate < len(candidates):
            c = candidates[next_candidate]
            next_candidate += 1
            member = class_used[c]
            new_unknown = unknown_mask | class_bits[c][member]
            if novel(known_mask, class_value[c], new_unknown, True):
                stack_op.append(class_ops[c][member])
                stack_class.append(c)
                stack_state.append(state)
                stack_fresh.append(fresh)
                stack_candidates.append(candidates)
                stack_next.append(next_candidate)
                stack_frontier.append(frontier)
                state = class_value[c]
                fresh = True
                unknown_mask = new_unknown
                class_used[c] += 1
                entry = nxt[0]
                unknown_pass = False
            continue

        # Both passes are done and the operation of the return entry at
        # `frontier` cannot be placed before it returned: a dead end.
        if best is None or len(stack_op) > len(best.prefix):
            best = _Failure(
                prefix=list(stack_op),
                stuck=entry_op[frontier],
                candidates=_pending_calls(nxt, is_call, entry_op, frontier),
            )
        if not stack_op:
            return best
        i = stack_op.pop()
        c = stack_class.pop()
        state = stack_state.pop()
        fresh = stack_fresh.pop()
        candidates = stack_candidates.pop()
        next_candidate = stack_next.pop()
        frontier = stack_frontier.pop()
        if c >= 0:
            class_used[c] -= 1
            unknown_mask ^= class_bits[c][class_used[c]]
            continue  # resume the unknown pass where it was
        known_mask ^= op_bit[i]
        remaining_known += 1
        # Relink in the reverse order of unlinking.
        entry = call_entry[i]
        ret = match[entry]
        nxt[prv[ret]] = ret
        prv[nxt[ret]] = ret
        nxt[prv[entry]] = entry
        prv[nxt[entry]] = entry
        entry = nxt[entry]
        unknown_pass = False
    return None


def _pending_calls(
    nxt: list[int], is_call: list[bool], entry_op: list[int], stop: int
) -> list[int]:
    """The operations whose call entries are linked before entry ``stop``."""
    pending = []
    entry = nxt[0]
    while entry != stop:
        if is_call[entry]:
            pending.append(entry_op[entry])
        entry = nxt[entry]
    return pending


# Explanations ------------------------------------------------------------------


def _explain_failure(key: str, history: Sequence[tuple[int, Operation]], failure: _Failure) -> str:
    def describe(i: int) -> str:
        position, op = history[i]
        return f"#{position} {_describe(op)}"

    # Replay the prefix with the real values: the search may have merged
    # values that nothing reads (rule 3 in the module docstring).
    state: bytes | None = None
    for i in failure.prefix:
        state = _apply(history[i][1], state)

    lines = [
        f"not linearizable: key {key!r} ({len(history)} operations; #N is an operation's "
        "position in the history as given)",
        f"longest linearizable prefix found: {len(failure.prefix)} operations",
    ]
    shown = failure.prefix[-_PREFIX_SHOWN:]
    if len(shown) < len(failure.prefix):
        lines.append(f"  ... {len(failure.prefix) - len(shown)} earlier operations")
    for i in shown:
        assumed = "" if history[i][1].status == "ok" else " (assumed to take effect here)"
        lines.append(f"  {describe(i)}{assumed}")
    lines.append(f"value after that prefix: {_show_value(state)}")
    stuck_op = history[failure.stuck][1]
    lines.append(
        f"stuck: {describe(failure.stuck)} returned at {stuck_op.complete!r}, but no order of "
        "the operations pending then lets it take effect by that time"
    )
    lines.append("operations of known outcome pending then, and applying each next:")
    for i in failure.candidates:
        lines.append(f"  {describe(i)}: {_why(history[i][1], state)}")
    return "\n".join(lines)


def _explain_unwritten_read(key: str, history: Sequence[tuple[int, Operation]], i: int) -> str:
    position, op = history[i]
    observed = op.output if op.kind == "get" else op.expected
    return (
        f"not linearizable: key {key!r}: #{position} {_describe(op)} observed "
        f"{_show_value(observed)}, but no put or cas on this key that could have written it "
        f"was invoked before {op.complete!r} (#N is an operation's position in the history "
        "as given)"
    )


def _apply(op: Operation, state: bytes | None) -> bytes | None:
    """The state after ``op`` takes effect on ``state`` (the sequential model)."""
    if op.kind == "put" or (op.kind == "cas" and state == op.expected):
        return op.value
    if op.kind == "delete":
        return None
    return state


def _why(op: Operation, state: bytes | None) -> str:
    """Why the known-outcome ``op`` can or cannot go next, on ``state``."""
    if op.kind == "get" and op.output != state:
        return f"cannot be next: it read {_show_value(op.output)} (value is {_show_value(state)})"
    if op.kind == "cas" and (state == op.expected) != op.output:
        outcome = "swapped" if op.output else "did not swap"
        return f"cannot be next: it {outcome}, but the value is {_show_value(state)}"
    return "could go next, but then the operations after it could not all be placed"


def _describe(op: Operation) -> str:
    if op.kind == "put":
        call = f"put({_show_value(op.value)})"
    elif op.kind == "delete":
        call = "delete()"
    elif op.kind == "get":
        call = "get()"
    else:
        call = f"cas({_show_value(op.expected)} -> {_show_value(op.value)})"
    if op.status == "ok":
        if op.kind == "get":
            call += f" -> {_show_value(op.output)}"
        elif op.kind == "cas":
            call += " -> swapped" if op.output else " -> not swapped"
        timing = f"[{op.invoke!r}, {op.complete!r}]"
    else:
        call += " -> outcome unknown"
        timing = f"[{op.invoke!r}, ...)"
    return f"client {op.client_id} {call} {timing}"


def _show_value(value: bytes | bool | None, limit: int = 40) -> str:
    if value is None:
        return "absent"
    text = repr(value)
    return text if len(text) <= limit else text[: limit - 3] + "..."


# JSONL -------------------------------------------------------------------------


def history_to_jsonl(ops: Iterable[Operation], path: str | os.PathLike[str]) -> None:
    """Write ``ops`` to ``path``, one JSON object per line (format: module docstring)."""
    with Path(path).open("w", encoding="utf-8") as out:
        for op in ops:
            complete = op.complete
            if complete is not None and not math.isfinite(complete):
                complete = None  # JSON has no infinity; an unknown outcome is null
            record = {
                "client_id": op.client_id,
                "kind": op.kind,
                "key": op.key,
                "value": _encode_bytes(op.value),
                "expected": _encode_bytes(op.expected),
                "invoke": op.invoke,
                "complete": complete,
                "status": op.status,
                "output": op.output if isinstance(op.output, bool) else _encode_bytes(op.output),
            }
            out.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")


def history_from_jsonl(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a history written by :func:`history_to_jsonl`.

    Raises :class:`HistoryError` (naming the line) for a malformed record.
    """
    ops = []
    with Path(path).open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                ops.append(_decode_operation(json.loads(line)))  # UTF-8 errors included
            except (HistoryError, ValueError, TypeError, KeyError) as exc:
                raise HistoryError(f"{path}:{number}: {exc}") from exc
    return ops


_FIELDS: Final = frozenset(
    {"client_id", "kind", "key", "value", "expected", "invoke", "complete", "status", "output"}
)


def _decode_operation(record: Any) -> Operation:
    if not isinstance(record, dict):
        raise HistoryError("a line must hold a JSON object")
    unknown_fields = set(record) - _FIELDS
    if unknown_fields:
        raise HistoryError(f"unknown fields {sorted(unknown_fields)}")
    client_id = record["client_id"]
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise HistoryError(f"client_id must be an integer, got {client_id!r}")
    output = record.get("output")
    return Operation(
        client_id=client_id,
        kind=record["kind"],
        key=record["key"],
        value=_decode_bytes(record.get("value")),
        expected=_decode_bytes(record.get("expected")),
        invoke=record["invoke"],
        complete=record.get("complete"),
        status=record["status"],
        output=output if isinstance(output, bool) else _decode_bytes(output),
    )


def _encode_bytes(value: bytes | None) -> dict[str, str] | None:
    if value is None:
        return None
    try:
        return {"utf8": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _decode_bytes(field: Any) -> bytes | None:
    if field is None:
        return None
    if isinstance(field, dict) and len(field) == 1:
        text = field.get("utf8")
        if isinstance(text, str):
            return text.encode("utf-8")
        encoded = field.get("b64")
        if isinstance(encoded, str):
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise HistoryError(f"bad base64 in {field!r}: {exc}") from exc
    raise HistoryError(f'bytes must be null, {{"utf8": ...}} or {{"b64": ...}}, got {field!r}')


# Command line ------------------------------------------------------------------


def main(argv: Sequence[str] | None = None) -> int:
    """Check a JSONL history file; exit status 0 linearizable, 1 not, 2 unknown."""
    parser = argparse.ArgumentParser(
        prog="python -m paxos_service.linearizability",
        description="Check that a recorded key-value history is linearizable.",
    )
    parser.add_argument("history", help="JSONL history file (one operation per line)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="search budget in seconds (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        ops = history_from_jsonl(args.history)
    except (OSError, HistoryError) as exc:
        print(f"error: cannot read history: {exc}", file=sys.stderr)
        return 2
    result = check_history(ops, timeout_seconds=args.timeout)
    print(result.explanation)
    if result.linearizable:
        return 0
    return 2 if result.timed_out else 1


if __name__ == "__main__":
    sys.exit(main())
