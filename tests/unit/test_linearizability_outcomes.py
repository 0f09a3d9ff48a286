"""The linearizability checker with operations whose outcome is unknown or failed.

A client that timed out does not know whether its write took effect: the
checker may let such an operation take effect once, at any time after it was
invoked (even long after the client gave up), or never. Failed operations
and unknown reads are ignored.
"""

from __future__ import annotations

from tests.unit.linearizability_support import (
    assert_linearizable,
    assert_not_linearizable,
    cas,
    delete,
    failed,
    get,
    put,
    unknown,
)

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
