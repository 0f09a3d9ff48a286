"""Black-box safety of a real ``paxos cluster`` whose proposers keep dying.

The issue's requirement, as one test: ``paxos cluster --learners 2`` (three
acceptors, two proposers, two learners, each an OS process) runs with the
acceptors' memory window cut to 40 instances (``PAXOS_MAX_RESIDENT_INSTANCES``,
which ``paxos cluster`` passes on to its nodes), so the log soon runs past what
an acceptor keeps in memory and older instances are served from disk. Under
a mixed load:

* three key-value clients doing put, linearizable get, compare-and-swap and
  delete on three keys, every operation recorded with its real-time interval
  and outcome (ok, failed = certainly not applied, unknown = may be applied);
* one single-decree client proposing its own values at instances the
  replicated log has already used (or is about to use), through the same
  proposers, so it contends with the log and reads old, evicted instances;
* a nemesis that SIGKILLs a proposer (sometimes both, one after the other)
  every two to three seconds and starts it again from the command line,
  environment and working directory it read from ``/proc``;

the cluster must keep its promises, judged only from outside:

1. the key-value history is linearizable
   (:func:`paxos_service.linearizability.check_history`), including a final
   put per client and a final linearizable read of every key after the faults
   stop (which must succeed: liveness once the proposers stay up);
2. both learners, once they have applied the same log instance, hold the
   same keys with the same values, versions and revisions;
3. every single-decree instance that answered OK answered one value only,
   and each learner's ``GetDecision`` names that same value.

Killing the proposers is the hard case for Multi-Paxos: a new leader must
recover every instance its predecessor may have had chosen (from acceptors
that only keep the newest 40 in memory) and never choose a second value, and
a client that lost its answer in the crash must not see its write applied
twice or a stale read. ``PAXOS_BLACKBOX_SECONDS`` sets how long the load runs
(default 25).
"""

from __future__ import annotations

import contextlib
import os
import random
import re
import signal
import subprocess
import sys
import threading
import time
from collections import Counter
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from grpc_health.v1 import health_pb2

from paxos_service.client import (
    InvalidArgumentError,
    OutcomeUnknownError,
    PaxosClient,
    PaxosError,
    UnavailableError,
)
from paxos_service.kv_client import KeyValue, KvClient
from paxos_service.linearizability import (
    Kind,
    Operation,
    Status,
    check_history,
    history_to_jsonl,
)
from tests.support.processes import clean_env, free_port_range, health_status, wait_until

WINDOW = 40
LOAD_SECONDS = float(os.environ.get("PAXOS_BLACKBOX_SECONDS", "25"))
KEYS = [f"bb/k{i}" for i in range(3)]
KV_CLIENTS = 3
KINDS: list[Kind] = ["put", "get", "cas", "delete"]
OP_TIMEOUT = 5.0
#: The client id of the final reads (the workers are 1..KV_CLIENTS).
FINAL_READER = 0


# The cluster ----------------------------------------------------------------


@dataclass
class Proposer:
    node_id: int
    address: str
    pid: int
    #: Set once the nemesis restarted it (then it is our child).
    process: subprocess.Popen[bytes] | None = None


@dataclass
class BlackboxCluster:
    process: subprocess.Popen[str]
    banner: list[str]
    rows: list[tuple[str, int, str, int]]  # role, id, address, pid
    workdir: Path
    proposers: list[Proposer] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def addresses(self, role: str) -> list[str]:
        return [address for r, _, address, _ in self.rows if r == role]

    def pids(self, role: str) -> list[int]:
        return [pid for r, _, _, pid in self.rows if r == role]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _proc_argv(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0")[:-1]]


def _proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (part.decode().partition("=") for part in raw.split(b"\0") if part)
    return {name: value for name, _, value in pairs}


def _is_paxos_node(pid: int) -> bool:
    """Still one of our nodes (not a recycled pid)?"""
    try:
        return "paxos_service" in _proc_argv(pid)
    except OSError:
        return False


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[BlackboxCluster]:
    base = free_port_range(7)
    env = clean_env() | {
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
        "PAXOS_MAX_RESIDENT_INSTANCES": str(WINDOW),
    }
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paxos_service",
            "cluster",
            "--learners",
            "2",
            "--base-port",
            str(base),
            "--data-dir",
            str(tmp_path / "data"),
        ],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        cwd=tmp_path,
        env=env,
    )
    banner: list[str] = []
    assert process.stdout is not None
    for line in process.stdout:
        banner.append(line.rstrip("\n"))
        if "Ctrl-C stops the cluster" in line:
            break
    else:
        process.wait(timeout=10)
        raise AssertionError("cluster exited early:\n" + "\n".join(banner))
    rows = []
    for line in banner:
        match = re.match(r"^(acceptor|proposer|learner)\s+(\d+)\s+(\S+)\s+(\d+)", line)
        if match:
            rows.append((match[1], int(match[2]), match[3], int(match[4])))
    running = BlackboxCluster(process, banner, rows, tmp_path)
    running.proposers = [Proposer(i, a, pid) for r, i, a, pid in rows if r == "proposer"]

    def drain() -> None:  # the supervisor's later lines (exits it noticed)
        assert process.stdout is not None
        for rest in process.stdout:
            running.output.append(rest.rstrip("\n"))

    drainer = threading.Thread(target=drain, name="cluster-stdout", daemon=True)
    drainer.start()
    try:
        yield running
    finally:
        if process.poll() is None:
            process.kill()
        for role, _, _, pid in rows:
            if role != "proposer" and _is_paxos_node(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proposer in running.proposers:
            if proposer.process is not None:
                proposer.process.kill()
                proposer.process.wait(timeout=10)
            elif _is_paxos_node(proposer.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proposer.pid, signal.SIGKILL)
        process.wait(timeout=10)
        drainer.join(timeout=5)


# The nemesis ------------------------------------------------------------------


class Nemesis:
    """SIGKILLs proposers and starts them again exactly as they were started."""

    def __init__(self, cluster: BlackboxCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.kills = 0
        self.double_kills = 0
        self.error: BaseException | None = None
        self.restarts = 0

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(self.rng.uniform(2.0, 3.0)):
                proposers = self.cluster.proposers
                if self.rng.random() < 0.25:
                    victims = self.rng.sample(proposers, len(proposers))
                    self.double_kills += 1
                else:
                    victims = [self.rng.choice(proposers)]
                saved = [self.kill(p) for p in victims]
                time.sleep(self.rng.uniform(0.2, 1.0))  # pacing, not synchronisation
                for proposer, (argv, env, cwd) in zip(victims, saved, strict=True):
                    self.restart(proposer, argv, env, cwd)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def kill(self, proposer: Proposer) -> tuple[list[str], dict[str, str], str]:
        pid = proposer.pid
        argv, env, cwd = _proc_argv(pid), _proc_env(pid), os.readlink(f"/proc/{pid}/cwd")
        assert "proposer" in argv, argv
        os.kill(pid, signal.SIGKILL)
        if proposer.process is not None:
            proposer.process.wait(timeout=10)
        else:  # the supervisor's child: it reaps it
            wait_until(lambda: not _pid_alive(pid), 10, f"proposer pid {pid} to die")
        self.kills += 1
        return argv, env, cwd

    def restart(self, proposer: Proposer, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.restarts += 1
        log = self.cluster.workdir / f"proposer-{proposer.node_id}-restart-{self.restarts}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        proposer.process, proposer.pid = process, process.pid
        _wait_serving(proposer, log)


def _wait_serving(proposer: Proposer, log: Path | None = None) -> None:
    def serving() -> bool:
        if proposer.process is not None and proposer.process.poll() is not None:
            text = log.read_text(errors="replace") if log is not None else ""
            raise AssertionError(f"proposer {proposer.node_id} exited:\n{text[-3000:]}")
        return bool(health_status(proposer.address) == health_pb2.HealthCheckResponse.SERVING)

    wait_until(serving, 20, f"proposer {proposer.node_id} at {proposer.address} to serve")


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


def _kv_worker(
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


def _decree_worker(
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


def _guarded(target: Callable[..., None], crashes: list[str]) -> Callable[..., None]:
    """``target``, with an exception it did not expect recorded for the test
    to report (a worker thread that died would otherwise only thin the load)."""

    def run(*args: object) -> None:
        try:
            target(*args)
        except BaseException as exc:
            crashes.append(f"{target.__name__}: {exc!r}")

    return run


# The checks ---------------------------------------------------------------------


def _same_applied_state(learners: list[str]) -> list[list[KeyValue]]:
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


def _decided(learner: PaxosClient, instance: int) -> bytes:
    """The value ``learner`` (LearnerService/GetDecision) says was chosen."""
    found: list[bytes] = []

    def decided() -> bool:
        value = learner.get(instance)
        if value is not None:
            found.append(value)
        return value is not None

    wait_until(decided, 15, f"a learner to know instance {instance}", 0.1)
    return found[0]


# The test -------------------------------------------------------------------------


@pytest.mark.timeout(int(LOAD_SECONDS) + 240)
def test_blackbox_safety_with_proposers_killed_again_and_again(
    cluster: BlackboxCluster, tmp_path: Path
) -> None:
    started = time.monotonic()
    learners = cluster.addresses("learner")
    proposers = cluster.addresses("proposer")
    assert len(learners) == 2 and len(proposers) == 2 and len(cluster.pids("acceptor")) == 3
    # The acceptors really run with the small memory window.
    for pid in cluster.pids("acceptor"):
        assert _proc_env(pid).get("PAXOS_MAX_RESIDENT_INSTANCES") == str(WINDOW), pid
        assert not any(a.startswith("--max-resident-instances") for a in _proc_argv(pid))

    seed = int(os.environ.get("PAXOS_BLACKBOX_SEED", str(random.randrange(1 << 30))))
    print(f"seed {seed}, load {LOAD_SECONDS:g} s")
    history = History()
    answers: list[Decree] = []
    decree_errors: Counter[str] = Counter()
    stop_load, stop_nemesis = threading.Event(), threading.Event()
    nemesis = Nemesis(cluster, random.Random(seed))
    crashes: list[str] = []
    workers = [
        threading.Thread(
            target=_guarded(_kv_worker, crashes),
            args=(c, learners, history, stop_load, seed + c),
            name=f"kv-{c}",
            daemon=True,
        )
        for c in range(1, KV_CLIENTS + 1)
    ]
    workers.append(
        threading.Thread(
            target=_guarded(_decree_worker, crashes),
            args=(proposers, history, stop_load, answers, decree_errors, seed + 100),
            name="single-decree",
            daemon=True,
        )
    )
    chaos = threading.Thread(target=nemesis.run, args=(stop_nemesis,), name="nemesis", daemon=True)
    for thread in workers:
        thread.start()
    chaos.start()
    stop_nemesis.wait(LOAD_SECONDS)  # the load's duration
    stop_nemesis.set()
    chaos.join(timeout=60)
    assert not chaos.is_alive(), "the nemesis did not stop"
    assert nemesis.error is None, f"nemesis failed: {nemesis.error!r}"
    stop_load.set()
    for thread in workers:
        thread.join(timeout=60)
        assert not thread.is_alive(), f"{thread.name} did not stop"
    assert not crashes, crashes
    load_ended = time.monotonic()

    # The faults have stopped: both proposers run, and every client's write
    # (and then a read of every key) gets through.
    for proposer in cluster.proposers:
        assert _pid_alive(proposer.pid), f"proposer {proposer.node_id} is not running"
        _wait_serving(proposer)
    for client in range(1, KV_CLIENTS + 1):
        key, value = KEYS[client % len(KEYS)], f"{client}.final".encode()
        with KvClient(learners, timeout=30.0) as kv:
            invoke = time.monotonic()
            try:
                kv.put(key, value)
            except PaxosError as exc:
                history.failed(client, "put", key, invoke, exc, value=value)
                raise AssertionError(f"final put of client {client} failed: {exc!r}") from exc
            history.record(client, "put", key, invoke, "ok", value=value)
    with KvClient(learners, timeout=30.0) as kv:
        for key in KEYS:
            invoke = time.monotonic()
            found = kv.get(key)
            output = found.value if found is not None else None
            history.record(FINAL_READER, "get", key, invoke, "ok", output=output)
    liveness = time.monotonic() - load_ended

    ops = history.ops
    statuses = Counter(op.status for op in ops)
    kinds = Counter(op.kind for op in ops if op.status == "ok")
    history_to_jsonl(ops, tmp_path / "history.jsonl")
    print(
        f"proposer kills {nemesis.kills} ({nemesis.double_kills} double); "
        f"kv operations {len(ops)} {dict(statuses)}, ok by kind {dict(kinds)}; "
        f"errors {dict(history.errors)}; single-decree answers {len(answers)} "
        f"on {len({a.instance for a in answers})} instances "
        f"({sum(a.own_value_chosen for a in answers)} own values chosen, slowest "
        f"{max((a.seconds for a in answers), default=0):.2f} s), "
        f"errors {dict(decree_errors)}; highest applied instance {history.applied_instance}; "
        f"final writes after {liveness:.1f} s"
    )

    # Sanity: the run did what it claims.
    assert nemesis.kills >= 3, nemesis.kills
    assert statuses["ok"] > 20, statuses
    assert answers, "no single-decree proposal was answered"
    assert history.applied_instance > 2 * WINDOW, (
        f"the log reached only instance {history.applied_instance}: never left the memory window"
    )

    # 1. Linearizable.
    verdict = check_history(ops, timeout_seconds=60)
    assert verdict.linearizable, (
        f"{verdict.explanation}\n(history saved to {tmp_path / 'history.jsonl'})"
    )

    # 2. Identical learners.
    first, second = _same_applied_state(learners)
    assert first == second, f"learners differ:\n{first}\n{second}"
    assert {kv.key for kv in first} <= set(KEYS), first

    # 3. Single-decree agreement, and the learners know the same value.
    by_instance: dict[int, set[bytes]] = {}
    for answer in answers:
        by_instance.setdefault(answer.instance, set()).add(answer.value)
    split = {i: values for i, values in by_instance.items() if len(values) > 1}
    assert not split, f"instances answered with different values: {split}"
    for learner in learners:
        with PaxosClient(learners=[learner], timeout=3.0) as reader:
            for instance, (value,) in sorted(by_instance.items()):
                decided = _decided(reader, instance)
                assert decided == value, (learner, instance, decided, value)
    print(f"total {time.monotonic() - started:.1f} s")
