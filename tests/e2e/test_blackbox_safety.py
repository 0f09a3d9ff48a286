"""Black-box safety of a real ``paxos cluster`` whose proposers keep dying.

The safety requirement, as one test: ``paxos cluster --learners 2`` (three
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
   (:func:`paxos_testing.linearizability.check_history`), including a final
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
from collections.abc import Iterator
from pathlib import Path

import pytest

from paxos_service.client.kv import KvClient
from paxos_service.client.paxos import PaxosClient
from paxos_service.core.errors import PaxosError
from paxos_testing.linearizability import check_history, history_to_jsonl
from tests.e2e.blackbox_cluster import (
    BlackboxCluster,
    Nemesis,
    Proposer,
    is_paxos_node,
    pid_alive,
    proc_argv,
    proc_env,
    wait_serving,
)
from tests.e2e.blackbox_load import (
    KEYS,
    Decree,
    History,
    decree_worker,
    guarded,
    kv_worker,
    learned_value,
    same_applied_state,
)
from tests.support.processes import clean_env, free_port_range

WINDOW = 40
LOAD_SECONDS = float(os.environ.get("PAXOS_BLACKBOX_SECONDS", "25"))
KV_CLIENTS = 3
#: The client id of the final reads (the workers are 1..KV_CLIENTS).
FINAL_READER = 0


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
            if role != "proposer" and is_paxos_node(pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        for proposer in running.proposers:
            if proposer.process is not None:
                proposer.process.kill()
                proposer.process.wait(timeout=10)
            elif is_paxos_node(proposer.pid):
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proposer.pid, signal.SIGKILL)
        process.wait(timeout=10)
        drainer.join(timeout=5)


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
        assert proc_env(pid).get("PAXOS_MAX_RESIDENT_INSTANCES") == str(WINDOW), pid
        assert not any(a.startswith("--max-resident-instances") for a in proc_argv(pid))

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
            target=guarded(kv_worker, crashes),
            args=(c, learners, history, stop_load, seed + c),
            name=f"kv-{c}",
            daemon=True,
        )
        for c in range(1, KV_CLIENTS + 1)
    ]
    workers.append(
        threading.Thread(
            target=guarded(decree_worker, crashes),
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
        assert pid_alive(proposer.pid), f"proposer {proposer.node_id} is not running"
        wait_serving(proposer)
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
    first, second = same_applied_state(learners)
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
                decided = learned_value(reader, instance)
                assert decided == value, (learner, instance, decided, value)
    print(f"total {time.monotonic() - started:.1f} s")
