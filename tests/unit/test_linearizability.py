"""The linearizability checker (paxos_service.linearizability).

Linearizability is Herlihy and Wing's condition ("Linearizability: A
Correctness Condition for Concurrent Objects", 1990): every operation takes
effect at one instant between its invoke and its reply, and the replies are
those of some sequential execution in that order. The examples below are
key-value (register) versions of the classic ones; each says where it comes
from. The randomized tests compare the checker with a brute-force oracle
that tries every order, and feed it histories recorded from a simulated
linearizable register.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import math
import random
import subprocess
import sys
from collections.abc import Sequence
from pathlib import Path

import pytest

from paxos_service.linearizability import (
    CheckResult,
    HistoryError,
    Operation,
    check_history,
    history_from_jsonl,
    history_to_jsonl,
    main,
)

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


# Histories that are linearizable ------------------------------------------------


def test_empty_history_is_linearizable() -> None:
    result = assert_linearizable([])
    assert (result.keys_checked, result.operations_checked) == (0, 0)


def test_sequential_history_follows_the_model() -> None:
    assert_linearizable(
        [
            get(None, 0, 1),
            put(b"a", 2, 3),
            get(b"a", 4, 5),
            cas(b"a", b"b", True, 6, 7),
            cas(b"a", b"c", False, 8, 9),
            get(b"b", 10, 11),
            delete(12, 13),
            get(None, 14, 15),
            cas(None, b"d", True, 16, 17),
            cas(None, b"e", False, 18, 19),
            get(b"d", 20, 21),
        ]
    )


@pytest.mark.parametrize("last", [b"a", b"b"])
def test_overlapping_writes_may_take_effect_in_either_order(last: bytes) -> None:
    assert_linearizable(
        [put(b"a", 0, 10, client=1), put(b"b", 1, 9, client=2), get(last, 11, 12, client=3)]
    )


@pytest.mark.parametrize("seen", [None, b"new"])
def test_read_concurrent_with_a_write_may_see_old_or_new_value(seen: bytes | None) -> None:
    assert_linearizable([put(b"new", 0, 10, client=1), get(seen, 2, 5, client=2)])


def test_touching_intervals_count_as_concurrent() -> None:
    # Each get was invoked at the very instant the put's reply arrived (or
    # the other way round), so either may have taken effect first.
    assert_linearizable([put(b"a", 0, 1), get(None, 1, 2, client=1)])
    assert_linearizable([get(b"a", 0, 1, client=1), put(b"a", 1, 2)])


def test_cas_races_where_exactly_one_wins() -> None:
    assert_linearizable(
        [
            put(b"0", 0, 1),
            cas(b"0", b"1", True, 2, 10, client=1),
            cas(b"0", b"2", False, 3, 9, client=2),
            get(b"1", 11, 12),
        ]
    )


def test_porcupine_register_example_is_linearizable() -> None:
    # Porcupine's TestRegisterModel, from MIT 6.824 (2017) quiz 2, section
    # VII. Its register starts at 0; ours starts absent.
    assert_linearizable(
        [put(b"100", 0, 100), get(b"100", 25, 75, client=1), get(None, 30, 60, client=2)]
    )


def test_porcupine_zero_duration_example_is_linearizable() -> None:
    # Porcupine's TestZeroDuration: operations that take no time at all.
    assert_linearizable(
        [
            put(b"100", 0, 100),
            get(b"100", 25, 75, client=1),
            get(None, 30, 30, client=2),
            get(None, 30, 30, client=3),
        ]
    )


# Histories that are not linearizable ----------------------------------------------


def test_stale_read_after_a_completed_write() -> None:
    assert_not_linearizable([put(b"a", 0, 1), put(b"b", 2, 3), get(b"a", 4, 5, client=1)])


def test_read_of_a_value_never_written() -> None:
    result = assert_not_linearizable([put(b"a", 0, 1), get(b"zz", 2, 3, client=1)])
    assert "b'zz'" in result.explanation
    assert "no put or cas on this key that could have written it" in result.explanation


def test_read_of_a_value_written_only_after_the_read_returned() -> None:
    assert_not_linearizable([get(b"a", 0, 1, client=1), put(b"a", 2, 3)])


def test_new_then_old_inversion() -> None:
    # Lamport's "new-old inversion" ("On Interprocess Communication", 1986):
    # fine for a regular register, impossible for an atomic (linearizable)
    # one. Both reads overlap the write, but the second starts after the
    # first returned, so it cannot see the older value.
    assert_not_linearizable(
        [
            put(b"old", 0, 1),
            put(b"new", 2, 20, client=1),
            get(b"new", 3, 5, client=2),
            get(b"old", 6, 8, client=3),
        ]
    )


def test_lost_acknowledged_write() -> None:
    assert_not_linearizable(
        [put(b"v1", 0, 1), put(b"v2", 2, 3, client=1), get(b"v1", 5, 6, client=2)]
    )


def test_cas_that_reports_success_although_the_value_did_not_match() -> None:
    assert_not_linearizable([put(b"a", 0, 1), cas(b"x", b"y", True, 2, 3, client=1)])


def test_cas_that_reports_failure_although_the_value_matched() -> None:
    assert_not_linearizable([put(b"a", 0, 1), cas(b"a", b"y", False, 2, 3, client=1)])


def test_two_cas_that_both_claim_to_have_won() -> None:
    assert_not_linearizable(
        [
            put(b"0", 0, 1),
            cas(b"0", b"1", True, 2, 10, client=1),
            cas(b"0", b"2", True, 3, 9, client=2),
        ]
    )


def test_read_after_delete_sees_deleted_value() -> None:
    assert_not_linearizable([put(b"a", 0, 1), delete(2, 3), get(b"a", 4, 5, client=1)])


def test_porcupine_register_example_is_not_linearizable() -> None:
    # Porcupine's TestRegisterModel, second history: a read returned the new
    # value and a later read returned the initial one.
    assert_not_linearizable(
        [put(b"200", 0, 100), get(b"200", 10, 30, client=1), get(None, 40, 90, client=2)]
    )


def test_porcupine_zero_duration_example_is_not_linearizable() -> None:
    assert_not_linearizable(
        [
            put(b"200", 0, 100),
            get(b"200", 10, 10, client=1),
            get(b"200", 10, 10, client=2),
            get(None, 40, 90, client=3),
        ]
    )


def test_explanation_names_the_stuck_operation_and_the_prefix() -> None:
    result = assert_not_linearizable([put(b"a", 0, 1), put(b"b", 2, 3), get(b"a", 4, 5, client=7)])
    text = result.explanation
    assert text.startswith("not linearizable: key 'k'")
    assert "longest linearizable prefix found: 2 operations" in text
    assert "value after that prefix: b'b'" in text
    assert "stuck: #2 client 7 get() -> b'a' [4, 5]" in text


# Outcomes that are unknown or failed ---------------------------------------------


def test_unknown_write_that_took_effect() -> None:
    assert_linearizable(
        [put(b"a", 0, 1), unknown(put(b"b", 2, 3, client=1)), get(b"b", 10, 11, client=2)]
    )


def test_unknown_write_that_did_not_take_effect() -> None:
    assert_linearizable(
        [put(b"a", 0, 1), unknown(put(b"b", 2, 3, client=1)), get(b"a", 10, 11, client=2)]
    )


def test_unknown_write_may_take_effect_long_after_the_client_gave_up() -> None:
    # The client stopped waiting at 3, the write still landed between 11 and 20.
    assert_linearizable(
        [
            put(b"a", 0, 1),
            unknown(put(b"b", 2, 3, client=1), gave_up=3),
            get(b"a", 10, 11, client=2),
            get(b"b", 20, 21, client=2),
        ]
    )


def test_unknown_write_takes_effect_at_most_once() -> None:
    history = [
        unknown(put(b"a", 0, 1, client=1)),
        get(b"a", 2, 3),
        put(b"b", 4, 5),
        get(b"a", 6, 7),
    ]
    assert_not_linearizable(history)
    # A second unknown write of the same value can explain the second read.
    assert_linearizable([*history, unknown(put(b"a", 1, 2, client=2))])


def test_unknown_write_cannot_take_effect_before_it_was_invoked() -> None:
    assert_not_linearizable(
        [put(b"a", 0, 1), get(b"b", 2, 5, client=1), put(b"c", 6, 7), unknown(put(b"b", 8, 9))]
    )


def test_unknown_delete() -> None:
    assert_linearizable([put(b"a", 0, 1), unknown(delete(2, 3)), get(None, 4, 5, client=1)])


def test_unknown_cas_swaps_only_if_the_value_matched() -> None:
    assert_linearizable([put(b"a", 0, 1), unknown(cas(b"a", b"b", True, 2, 3)), get(b"b", 4, 5)])
    assert_not_linearizable(
        [put(b"a", 0, 1), unknown(cas(b"x", b"b", True, 2, 3)), get(b"b", 4, 5)]
    )


def test_chain_of_unknown_writes() -> None:
    # Two timed-out operations, each needed: a put of "a", then a cas from "a".
    assert_linearizable(
        [
            unknown(put(b"a", 0, 1, client=1)),
            unknown(cas(b"a", b"b", True, 2, 3, client=2)),
            get(b"b", 10, 11),
        ]
    )
    assert_not_linearizable([unknown(cas(b"a", b"b", True, 2, 3, client=2)), get(b"b", 10, 11)])


def test_unknown_write_can_explain_a_cas_that_did_not_swap() -> None:
    history = [put(b"a", 0, 1), cas(b"a", b"c", False, 5, 6, client=2)]
    assert_not_linearizable(history)
    assert_linearizable([*history, unknown(put(b"b", 2, 3, client=1))])


def test_unknown_write_kept_for_later_is_not_pruned() -> None:
    # Only one order works: the cas of 6 first, then the put, then the
    # timed-out delete just before the cas of 14. The search first tries the
    # delete early and fails; the configurations after that failure used
    # fewer unknown writes, so rule 1 must not prune them.
    assert_linearizable(
        [
            unknown(delete(4, 5, client=1)),
            cas(None, b"2", True, 6, 6, client=2),
            cas(None, b"0", True, 13, 14, client=2),
            put(b"3", 2, 6, client=3),
        ]
    )


def test_refused_cas_may_need_a_write_whose_value_is_read_later() -> None:
    # Either timed-out put lets the cas fail, but only the put of "x", whose
    # value nobody reads, leaves the put of "b" for the get (rule 4).
    assert_linearizable(
        [
            put(b"a", 0, 1),
            unknown(put(b"b", 2, 3, client=1)),
            unknown(put(b"x", 2.5, 3, client=2)),
            cas(b"a", b"c", False, 3, 4, client=3),
            put(b"y", 5, 6),
            get(b"b", 7, 8, client=3),
        ]
    )


def test_unknown_cas_operations_differ_by_expected_value() -> None:
    # Both timed-out cas operations write "v", but only the one that expects
    # "b" can swap, and it was invoked second.
    assert_linearizable(
        [
            put(b"b", 0, 1),
            unknown(cas(b"a", b"v", True, 2, 3, client=1)),
            unknown(cas(b"b", b"v", True, 3, 4, client=2)),
            get(b"v", 5, 6),
        ]
    )


def test_value_read_only_through_an_unknown_cas_is_not_spare() -> None:
    # As in the refused-cas test above, the put of "x" must let the cas
    # fail: the put of "w" is needed later, by the timed-out cas from "w".
    assert_linearizable(
        [
            put(b"a", 0, 1),
            unknown(put(b"w", 2, 3, client=1)),
            unknown(put(b"x", 2.5, 3, client=2)),
            cas(b"a", b"c", False, 3, 4, client=3),
            put(b"y", 5, 6),
            unknown(cas(b"w", b"z", True, 6.5, 7, client=4)),
            get(b"z", 7, 8, client=3),
        ]
    )


def test_unknown_read_is_ignored() -> None:
    result = assert_linearizable([put(b"a", 0, 1), unknown(get(b"zz", 2, 3, client=1))])
    assert result.operations_checked == 1


def test_failed_operations_are_ignored() -> None:
    history = [
        put(b"a", 0, 1),
        failed(put(b"b", 2, 3, client=1)),
        failed(cas(b"a", b"c", True, 2, 3, client=2)),
        failed(get(b"zz", 2, 3, client=3)),
        get(b"a", 4, 5),
    ]
    result = assert_linearizable(history)
    assert result.operations_checked == 2
    assert "3 ignored (failed, or reads of unknown outcome)" in result.explanation
    # A failed write definitely did not happen, so nobody may read its value.
    assert_not_linearizable([put(b"a", 0, 1), failed(put(b"b", 2, 3)), get(b"b", 4, 5)])


# Keys are independent ---------------------------------------------------------------


def test_keys_are_checked_independently() -> None:
    # One register for both keys would have b"2" by the time of the get.
    result = assert_linearizable(
        [put(b"1", 0, 1, key="x"), put(b"2", 2, 3, key="y"), get(b"1", 4, 5, key="x")]
    )
    assert (result.keys_checked, result.operations_checked) == (2, 3)


def test_the_failing_key_is_reported() -> None:
    good = [put(b"a", 0, 1, key="a"), get(b"a", 2, 3, key="a")]
    stale = [put(b"a", 0, 1, key="b"), put(b"b", 2, 3, key="b"), get(b"a", 4, 5, key="b")]
    result = assert_not_linearizable(good + stale, bad_key="b")
    assert result.keys_checked == 2
    assert "key 'b'" in result.explanation


def test_first_failing_key_in_sorted_order_is_reported() -> None:
    def stale(key: str) -> list[Operation]:
        return [put(b"a", 0, 1, key=key), put(b"b", 2, 3, key=key), get(b"a", 4, 5, key=key)]

    assert_not_linearizable(stale("z") + stale("m"), bad_key="m")


# Budget, validation and the search's depth -------------------------------------------


def test_exhausted_budget_is_reported_as_unknown() -> None:
    result = check_history([put(b"a", 0, 1)], timeout_seconds=0)
    assert result.timed_out
    assert not result.linearizable
    assert result.bad_key is None
    assert result.explanation.startswith("unknown (budget exhausted)")


def test_long_history_needs_no_recursion() -> None:
    # Deeper than Python's default recursion limit, twice over.
    depth = 2 * sys.getrecursionlimit()
    history = [put(b"%d" % i, 2 * i, 2 * i + 1) for i in range(depth)]
    assert_linearizable(history)
    assert_not_linearizable([*history, get(b"0", 2 * depth, 2 * depth + 1)])


@pytest.mark.parametrize(
    "fields",
    [
        {"kind": "append"},
        {"status": "maybe"},
        {"complete": None},
        {"complete": -1.0},
        {"complete": math.inf},
        {"invoke": math.nan},
        {"kind": "cas", "output": None},
        {"kind": "get", "value": None, "output": True},
        {"kind": "put", "value": None},
        {"kind": "put", "output": b"x"},
    ],
)
def test_impossible_operations_are_refused(fields: dict[str, object]) -> None:
    template = {
        "client_id": 1,
        "kind": "put",
        "key": KEY,
        "value": b"v",
        "invoke": 0.0,
        "complete": 1.0,
        "status": "ok",
    }
    with pytest.raises(HistoryError):
        Operation(**{**template, **fields})  # type: ignore[arg-type]


# JSONL and the command line ------------------------------------------------------------


def test_jsonl_round_trip(tmp_path: Path) -> None:
    history = [
        put(b"text", 0, 1.5),
        put(b"\xff\x00binary", 2, 3, client=2),
        get(None, 4, 5),
        cas(None, b"x", False, 6, 7, key="other key"),
        unknown(delete(8, 9)),
        unknown(cas(b"\xfe", b"y", True, 10, 11), gave_up=12.5),
        failed(get(b"z", 13, 14)),
    ]
    path = tmp_path / "history.jsonl"
    history_to_jsonl(history, path)
    assert history_from_jsonl(path) == history
    records = [json.loads(line) for line in path.read_text().splitlines()]
    assert records[0]["value"] == {"utf8": "text"}
    assert records[1]["value"] == {"b64": "/wBiaW5hcnk="}
    assert records[3]["output"] is False
    assert records[4]["complete"] is None


def test_jsonl_writes_an_infinite_complete_time_as_null(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    history_to_jsonl([unknown(put(b"a", 0, 1), gave_up=math.inf)], path)
    assert history_from_jsonl(path)[0].complete is None


@pytest.mark.parametrize(
    "line",
    [
        "not json",
        "[1, 2]",
        '{"client_id": 1, "kind": "put", "key": "k", "value": "raw", "invoke": 0, '
        '"complete": 1, "status": "ok"}',
        '{"client_id": 1, "kind": "put", "key": "k", "value": {"b64": "!!"}, "invoke": 0, '
        '"complete": 1, "status": "ok"}',
        '{"client_id": 1, "kind": "get", "key": "k", "invoke": 0, "complete": 1, '
        '"status": "ok", "colour": "red"}',
        '{"kind": "get", "key": "k", "invoke": 0, "complete": 1, "status": "ok"}',
    ],
)
def test_jsonl_reader_names_the_bad_line(tmp_path: Path, line: str) -> None:
    path = tmp_path / "history.jsonl"
    good = (
        '{"client_id": 1, "kind": "get", "key": "k", "invoke": 0, "complete": 1, '
        '"status": "ok", "output": null}'
    )
    path.write_text(f"{good}\n\n{line}\n")
    with pytest.raises(HistoryError, match=r"history\.jsonl:3: "):
        history_from_jsonl(path)


def test_jsonl_reader_refuses_invalid_utf8(tmp_path: Path) -> None:
    path = tmp_path / "history.jsonl"
    path.write_bytes(b'{"client_id": 1, "kind": "get", "key": "\xff"}\n')
    with pytest.raises(HistoryError, match=r"history\.jsonl:1: "):
        history_from_jsonl(path)


def test_checked_in_histories() -> None:
    lost = check_history(history_from_jsonl(HISTORIES / "lost_acknowledged_write.jsonl"))
    assert (lost.linearizable, lost.bad_key) == (False, "account/7")
    partition = check_history(history_from_jsonl(HISTORIES / "partition_timeouts.jsonl"))
    assert partition.linearizable, partition.explanation


def test_cli_exit_status(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    good = tmp_path / "good.jsonl"
    history_to_jsonl([put(b"a", 0, 1), get(b"a", 2, 3)], good)
    assert main([str(good)]) == 0
    assert capsys.readouterr().out.startswith("linearizable: 2 operations on 1 keys")

    assert main([str(HISTORIES / "lost_acknowledged_write.jsonl")]) == 1
    assert capsys.readouterr().out.startswith("not linearizable: key 'account/7'")

    assert main([str(good), "--timeout", "0"]) == 2
    assert capsys.readouterr().out.startswith("unknown (budget exhausted)")

    assert main([str(tmp_path / "missing.jsonl")]) == 2
    assert "cannot read history" in capsys.readouterr().err


def test_runs_as_a_module() -> None:
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "paxos_service.linearizability",
            str(HISTORIES / "lost_acknowledged_write.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 1, completed.stderr
    assert "not linearizable" in completed.stdout


# Randomized: a simulated linearizable register, and a brute-force oracle ---------------

VALUES = [b"0", b"1", b"2", b"3"]


def simulate(
    rng: random.Random,
    n_ops: int,
    *,
    clients: int,
    keys: Sequence[str] = (KEY,),
    p_unknown: float = 0.0,
    p_fail: float = 0.0,
    unique_values: bool = False,
    tick: float | None = None,
) -> list[Operation]:
    """A history of a real linearizable key-value map.

    Operations take effect one at a time, at increasing linearization
    points, on a sequential map; each gets a random real-time interval
    around its point, and each client runs one operation at a time. An
    operation of unknown outcome takes effect or not at random. With `tick`,
    times are rounded outwards to a coarse clock, which makes many
    intervals touch.
    """
    store: dict[str, bytes | None] = dict.fromkeys(keys)
    busy_until = [-math.inf] * clients
    history: list[Operation] = []
    now = 0.0
    for _ in range(n_ops):
        now += rng.expovariate(1.0)
        free = [c for c in range(clients) if busy_until[c] < now]
        if not free:
            now = min(busy_until) + 1e-3
            free = [c for c in range(clients) if busy_until[c] < now]
        client = rng.choice(free)
        invoke = rng.uniform(max(busy_until[client], now - clients), now)
        complete = now + rng.uniform(0, clients)
        if tick:
            invoke = math.floor(invoke / tick) * tick
            complete = math.ceil(complete / tick) * tick
        busy_until[client] = complete

        key = rng.choice(keys)
        current = store[key]
        kind = rng.choice(["get", "get", "put", "put", "cas", "delete"])
        if unique_values:
            value = b"w%d" % len(history)
            earlier = b"w%d" % rng.randint(0, len(history))
        else:
            value, earlier = rng.choice(VALUES), rng.choice(VALUES)
        expected = rng.choice([current, current, None, earlier])
        roll = rng.random()
        status = "unknown" if roll < p_unknown else "fail" if roll < p_unknown + p_fail else "ok"
        if status == "ok" or (status == "unknown" and rng.random() < 0.5):
            if kind == "put" or (kind == "cas" and current == expected):
                store[key] = value
            elif kind == "delete":
                store[key] = None
        output: bytes | bool | None = None
        if kind == "get":
            output = current
        elif kind == "cas":
            output = current == expected
        history.append(
            Operation(
                client_id=client,
                kind=kind,  # type: ignore[arg-type]
                key=key,
                value=value if kind in ("put", "cas") else None,
                expected=expected if kind == "cas" else None,
                invoke=invoke,
                complete=complete if status == "ok" else None,
                status=status,  # type: ignore[arg-type]
                output=output if status == "ok" else None,
            )
        )
    return history


def brute_force_linearizable(history: Sequence[Operation]) -> bool:
    """Try every order (for small histories): the definition, nothing clever."""
    relevant = [
        op for op in history if op.status == "ok" or (op.status == "unknown" and op.kind != "get")
    ]
    return all(
        _brute_force_key(tuple(op for op in relevant if op.key == key))
        for key in {op.key for op in relevant}
    )


def _brute_force_key(ops: tuple[Operation, ...]) -> bool:
    @functools.cache
    def search(remaining: frozenset[int], state: bytes | None) -> bool:
        replies = [
            reply
            for i in remaining
            if ops[i].status == "ok" and (reply := ops[i].complete) is not None
        ]
        if not replies:
            return True  # the remaining unknown operations never took effect
        first_reply = min(replies)
        for i in remaining:
            op = ops[i]
            if op.invoke > first_reply:
                continue  # some remaining operation returned before this one began
            if op.kind == "get":
                after = [state] if op.output == state else []
            elif op.kind == "put":
                after = [op.value]
            elif op.kind == "delete":
                after = [None]
            elif state == op.expected:
                after = [op.value] if op.status == "unknown" or op.output is True else []
            else:
                after = [state] if op.status == "unknown" or op.output is False else []
            if any(search(remaining - {i}, new_state) for new_state in after):
                return True
        return False

    return search(frozenset(range(len(ops))), None)


def random_small_history(rng: random.Random) -> list[Operation]:
    """A few operations with arbitrary replies on a coarse clock: mostly not
    linearizable, with many ties, unknown outcomes and values nobody reads."""
    history = []
    for _ in range(rng.randint(1, 9)):
        kind = rng.choice(["get", "get", "put", "cas", "cas", "delete"])
        invoke = rng.randint(0, 12)
        status = rng.choice(["ok"] * 5 + ["unknown"] * 3 + ["fail"])
        output: bytes | bool | None = None
        if kind == "get":
            output = rng.choice([None, *VALUES[:3]])
        elif kind == "cas":
            output = rng.random() < 0.4
        history.append(
            Operation(
                client_id=0,
                kind=kind,  # type: ignore[arg-type]
                key=rng.choice([KEY] * 4 + ["other"]),
                value=rng.choice([*VALUES, b"unread"]) if kind in ("put", "cas") else None,
                expected=rng.choice([None, *VALUES[:3]]) if kind == "cas" else None,
                invoke=invoke,
                complete=invoke + rng.randint(0, 5) if status == "ok" else None,
                status=status,  # type: ignore[arg-type]
                output=output if status == "ok" else None,
            )
        )
    return history


def test_agrees_with_brute_force_on_small_random_histories() -> None:
    verdicts = []
    for seed in range(1500):
        history = random_small_history(random.Random(seed))
        expected = brute_force_linearizable(history)
        assert check_history(history).linearizable == expected, f"seed {seed}"
        verdicts.append(expected)
    assert 0.1 < sum(verdicts) / len(verdicts) < 0.9  # both kinds were exercised


def test_agrees_with_brute_force_on_mutated_register_histories() -> None:
    rejected = 0
    for seed in range(400):
        rng = random.Random(seed)
        history = simulate(
            rng, rng.randint(2, 10), clients=rng.randint(1, 5), p_unknown=0.3, p_fail=0.1
        )
        reads = [i for i, op in enumerate(history) if op.status == "ok" and op.kind == "get"]
        if reads:
            i = rng.choice(reads)
            other = [v for v in [None, *VALUES] if v != history[i].output]
            history[i] = dataclasses.replace(history[i], output=rng.choice(other))
        verdict = check_history(history).linearizable
        assert verdict == brute_force_linearizable(history), f"seed {seed}"
        rejected += not verdict
    assert rejected > 100


@pytest.mark.parametrize("unique_values", [False, True])
def test_simulated_register_histories_are_linearizable(unique_values: bool) -> None:
    for seed in range(150):
        rng = random.Random(seed)
        history = simulate(
            rng,
            rng.randint(1, 80),
            clients=rng.randint(1, 8),
            keys=["a", "b", "c"][: rng.randint(1, 3)],
            p_unknown=rng.choice([0.0, 0.1, 0.3]),
            p_fail=rng.choice([0.0, 0.1]),
            unique_values=unique_values,
            tick=rng.choice([None, None, 1.0, 5.0]),
        )
        result = check_history(history)
        assert result.linearizable, f"seed {seed}: {result.explanation}"


def test_reads_of_values_never_written_are_always_rejected() -> None:
    for seed in range(300):
        rng = random.Random(seed)
        history = simulate(rng, rng.randint(1, 80), clients=rng.randint(1, 8), p_unknown=0.2)
        reads = [i for i, op in enumerate(history) if op.status == "ok" and op.kind == "get"]
        if not reads:
            continue
        i = rng.choice(reads)
        history[i] = dataclasses.replace(history[i], output=b"never written")
        result = check_history(history)
        assert not result.linearizable, f"seed {seed}"
        assert not result.timed_out


def test_five_keys_of_two_thousand_operations_with_eight_clients_each() -> None:
    rng = random.Random(2024)
    history = [
        op
        for key in ["k0", "k1", "k2", "k3", "k4"]
        for op in simulate(rng, 2000, clients=8, keys=[key], p_unknown=0.05, p_fail=0.02)
    ]
    result = check_history(history, timeout_seconds=60)
    assert result.linearizable, result.explanation
    assert result.keys_checked == 5
