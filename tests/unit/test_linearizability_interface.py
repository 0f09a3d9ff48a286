"""The linearizability checker's interface: keys, budget, validation, JSONL and the CLI.

Keys are checked independently and the first failing one is reported; an
exhausted search budget is reported as unknown; impossible operations are
refused; and histories round-trip through JSONL and the command line.
"""

from __future__ import annotations

import json
import math
import subprocess
import sys
from pathlib import Path

import pytest

from paxos_testing.linearizability import (
    HistoryError,
    Operation,
    check_history,
    history_from_jsonl,
    history_to_jsonl,
    main,
)
from tests.unit.linearizability_support import (
    HISTORIES,
    KEY,
    assert_linearizable,
    assert_not_linearizable,
    cas,
    delete,
    failed,
    get,
    put,
    unknown,
)

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
            "paxos_testing.linearizability",
            str(HISTORIES / "lost_acknowledged_write.jsonl"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=60,
    )
    assert completed.returncode == 1, completed.stderr
    assert "not linearizable" in completed.stdout
