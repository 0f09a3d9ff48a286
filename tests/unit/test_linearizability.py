"""The linearizability checker (paxos_testing.linearizability): the classic examples.

Linearizability is Herlihy and Wing's condition ("Linearizability: A
Correctness Condition for Concurrent Objects", 1990): every operation takes
effect at one instant between its invoke and its reply, and the replies are
those of some sequential execution in that order. The examples below are
key-value (register) versions of the classic ones, linearizable or not;
each says where it comes from.
"""

from __future__ import annotations

import pytest

from tests.unit.linearizability_support import (
    assert_linearizable,
    assert_not_linearizable,
    cas,
    delete,
    get,
    put,
)

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
