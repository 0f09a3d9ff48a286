"""The load and the checks of the black-box safety test.

Key-value workers that record every operation with its real-time interval
and outcome for the linearizability checker, a single-decree worker that
contends with the replicated log, and the reads that compare the learners.
"""

from __future__ import annotations

import random
import threading
import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass

from paxos_service.client.kv import KeyValue, KvClient
from paxos_service.client.paxos import PaxosClient
from paxos_service.core.errors import (
    InvalidArgumentError,
    OutcomeUnknownError,
    PaxosError,
    UnavailableError,
)
from paxos_testing.linearizability import Kind, Operation, Status
from tests.support.processes import wait_until

KEYS = [f"bb/k{i}" for i in range(3)]
KINDS: list[Kind] = ["put", "get", "cas", "delete"]
OP_TIMEOUT = 5.0

# The load -----------------------------------------------------------------------


class History:
    def __init__(self) -> None:
        self.ops: list[Operation] = []
        self.errors: Counter[str] = Counter()
        self.lock = threading.Lock()
        #: The highest log instance a learner said it had applied.
        self.applied_instance = 0

    def record(
        self,
        client: int,
        kind: Kind,
        key: str,
        invoke: float,
        status: Status,
        *,
        value: bytes | None = None,
        expected: bytes | None = None,
        output: bytes | bool | None = None,
    ) -> Operation:
        op = Operation(
            client_id=client,
            kind=kind,
            key=key,
            value=value,
            expected=expected,
            invoke=invoke,
            complete=time.monotonic() if status == "ok" else None,
            status=status,
            output=output if status == "ok" else None,
        )
        with self.lock:
            self.ops.append(op)
        return op

    def failed(
        self,
        client: int,
        kind: Kind,
        key: str,
        invoke: float,
        exc: Exception,
        *,
        value: bytes | None = None,
        expected: bytes | None = None,
    ) -> None:
        """Classify an error conservatively: "fail" only when the client's
        documented contract says the command was not applied and never will
        be (UNAVAILABLE with nothing appended, bad input); "unknown" for
        everything else (outcome unknown, deadlines, anything unexpected)."""
        status: Status = "unknown"
        if isinstance(exc, UnavailableError | InvalidArgumentError) and not isinstance(
            exc, OutcomeUnknownError
        ):
            status = "fail"
        with self.lock:
            self.errors[f"{kind}: {type(exc).__name__}"] += 1
        self.record(client, kind, key, invoke, status, value=value, expected=expected)


def kv_worker(
    client: int, learners: list[str], history: History, stop: threading.Event, seed: int
) -> None:
    rng = random.Random(seed)
    shift = client % len(learners)
    #: Values this client saw for each key (None: absent), for cas to expect.
    seen: dict[str, list[bytes | None]] = {key: [None] for key in KEYS}
    last: dict[str, bytes | None] = dict.fromkeys(KEYS)
    n = 0
    with KvClient(learners[shift:] + learners[:shift], timeout=OP_TIMEOUT) as kv:
        while not stop.is_set():
            n += 1
            key = rng.choice(KEYS)
            value = f"{client}.{n}".encode()
            kind = rng.choices(KINDS, [35, 30, 25, 10])[0]
            expected = last[key] if rng.random() < 0.7 else rng.choice(seen[key])
            invoke = time.monotonic()
            try:
                if kind == "put":
                    kv.put(key, value)
                    history.record(client, kind, key, invoke, "ok", value=value)
                    last[key] = value
                elif kind == "get":
                    got = kv.get_detailed(key)
                    output = got.kv.value if got.kv is not None else None
                    history.record(client, kind, key, invoke, "ok", output=output)
                    history.applied_instance = max(history.applied_instance, got.applied_instance)
                    last[key] = output
                elif kind == "cas":
                    if expected is None:
                        result = kv.cas(key, value, expected_version=0)
                    else:
                        result = kv.cas(key, value, expected_value=expected)
                    history.record(
                        client,
                        kind,
                        key,
                        invoke,
                        "ok",
                        value=value,
                        expected=expected,
                        output=result.succeeded,
                    )
                    current = result.current
                    if result.succeeded:
                        last[key] = value
                    else:
                        last[key] = current.value if current is not None else None
                else:
                    kv.delete(key)
                    history.record(client, kind, key, invoke, "ok")
                    last[key] = None
            except PaxosError as exc:
                history.failed(
                    client,
                    kind,
                    key,
                    invoke,
                    exc,
                    value=value if kind in ("put", "cas") else None,
                    expected=expected if kind == "cas" else None,
                )
                continue
            if last[key] not in seen[key]:
                seen[key].append(last[key])


@dataclass
class Decree:
    instance: int
    value: bytes
    own_value_chosen: bool
    seconds: float


def decree_worker(
    proposers: list[str],
    history: History,
    stop: threading.Event,
    answers: list[Decree],
    errors: Counter[str],
    seed: int,
) -> None:
    rng = random.Random(seed)
    n = 0
    with PaxosClient(proposers=proposers, timeout=3.0) as client:
        while not stop.is_set():
            n += 1
            if rng.random() < 0.5:
                instance = rng.randint(1, 50)
            else:  # up to just past where the log stands: contended with the leader
                instance = rng.randint(1, max(50, history.applied_instance + 5))
            invoke = time.monotonic()
            try:
                result = client.propose_detailed(instance, f"p{n}".encode())
            except PaxosError as exc:
                errors[type(exc).__name__] += 1
            else:
                assert result.instance == instance
                answers.append(
                    Decree(
                        instance, result.value, result.own_value_chosen, time.monotonic() - invoke
                    )
                )
            stop.wait(rng.uniform(0.02, 0.08))  # pacing, not synchronisation


def guarded(target: Callable[..., None], crashes: list[str]) -> Callable[..., None]:
    """``target``, with an exception it did not expect recorded for the test
    to report (a worker thread that died would otherwise only thin the load)."""

    def run(*args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:
            crashes.append(f"{target.__name__}: {exc!r}")

    return run


# The checks ---------------------------------------------------------------------


def same_applied_state(learners: list[str]) -> list[list[KeyValue]]:
    """Each learner's whole store (a stale Range over every key), read when
    both have applied the same instance: bracketed by two stale reads of the
    applied instance that agree on each learner and across learners."""
    clients = [KvClient([address], timeout=OP_TIMEOUT) for address in learners]
    found: list[list[KeyValue]] = []
    last: list[int] = []

    def settled() -> bool:
        states, applied = [], []
        for kv in clients:
            before = kv.get_detailed(KEYS[0], stale=True)
            kvs = kv.range("", stale=True)
            after = kv.get_detailed(KEYS[0], stale=True)
            if before.applied_instance != after.applied_instance or after.lag_instances:
                return False
            states.append(kvs)
            applied.append(after.applied_instance)
        last[:] = applied
        if len(set(applied)) != 1:
            return False
        found[:] = states
        return True

    try:
        wait_until(settled, 30, f"both learners to apply the same instance (last: {last})", 0.1)
    finally:
        for kv in clients:
            kv.close()
    print(f"learners agree at applied instance {last[0]}")
    return found


def learned_value(learner: PaxosClient, instance: int) -> bytes:
    """The value ``learner`` (LearnerService/GetDecision) says was chosen."""
    found: list[bytes] = []

    def decided() -> bool:
        value = learner.get(instance)
        if value is not None:
            found.append(value)
        return value is not None

    wait_until(decided, 15, f"a learner to know instance {instance}", 0.1)
    return found[0]
