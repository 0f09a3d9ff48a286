"""The verdict on a whole history: :func:`check_history`.

Keys are independent, so the history is split by key and each key is checked
on its own (:mod:`.search` says how, and why that is exact). A read of a value
that nothing could have written by then needs no search, so every key is
scanned for one first.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from typing import Final

from paxos_testing.linearizability.explain import explain_failure, explain_unwritten_read
from paxos_testing.linearizability.history import Operation
from paxos_testing.linearizability.search import SearchTimeout, check_key

DEFAULT_TIMEOUT_SECONDS: Final = 30.0


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
                explanation=explain_unwritten_read(key, history, bad_read),
                timed_out=False,
            )

    keys_checked = 0
    operations_checked = 0
    for key in keys:
        history = by_key[key]
        try:
            failure = check_key(history, deadline)
        except SearchTimeout:
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
                explanation=explain_failure(key, history, failure),
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
