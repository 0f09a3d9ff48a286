"""Shared helpers for the linearizability checker tests.

Builders for single-key operations (put, get, delete, compare-and-swap, and
their unknown or failed outcomes) and assertions that a history is, or is
not, linearizable, with a check of what the checker reports.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence
from pathlib import Path

from paxos_testing.linearizability import CheckResult, Operation, check_history

HISTORIES = Path(__file__).parent / "histories"
KEY = "k"


# Building histories -------------------------------------------------------------


def put(
    value: bytes, invoke: float, complete: float, *, client: int = 0, key: str = KEY
) -> Operation:
    return Operation(
        client_id=client,
        kind="put",
        key=key,
        value=value,
        invoke=invoke,
        complete=complete,
        status="ok",
    )


def get(
    output: bytes | None, invoke: float, complete: float, *, client: int = 0, key: str = KEY
) -> Operation:
    return Operation(
        client_id=client,
        kind="get",
        key=key,
        invoke=invoke,
        complete=complete,
        status="ok",
        output=output,
    )


def delete(invoke: float, complete: float, *, client: int = 0, key: str = KEY) -> Operation:
    return Operation(
        client_id=client, kind="delete", key=key, invoke=invoke, complete=complete, status="ok"
    )


def cas(
    expected: bytes | None,
    value: bytes,
    swapped: bool,
    invoke: float,
    complete: float,
    *,
    client: int = 0,
    key: str = KEY,
) -> Operation:
    return Operation(
        client_id=client,
        kind="cas",
        key=key,
        value=value,
        expected=expected,
        invoke=invoke,
        complete=complete,
        status="ok",
        output=swapped,
    )


def unknown(op: Operation, gave_up: float | None = None) -> Operation:
    """The same call, but the client never learned the outcome."""
    return dataclasses.replace(op, status="unknown", complete=gave_up, output=None)


def failed(op: Operation) -> Operation:
    """The same call, but the server said it definitely did not happen."""
    return dataclasses.replace(op, status="fail")


def assert_linearizable(ops: Sequence[Operation]) -> CheckResult:
    result = check_history(ops)
    assert result.linearizable, result.explanation
    assert not result.timed_out
    assert result.bad_key is None
    return result


def assert_not_linearizable(ops: Sequence[Operation], bad_key: str = KEY) -> CheckResult:
    result = check_history(ops)
    assert not result.linearizable, result.explanation
    assert not result.timed_out
    assert result.bad_key == bad_key
    return result
