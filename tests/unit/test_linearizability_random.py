"""The linearizability checker on randomized histories.

The checker is compared with a brute-force oracle that tries every order,
and fed histories recorded from a simulated linearizable register, including
large multi-key ones.
"""

from __future__ import annotations

import dataclasses
import functools
import math
import random
from collections.abc import Sequence

import pytest

from paxos_testing.linearizability import Operation, check_history
from tests.unit.linearizability_support import KEY

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
