"""The checkers: pure functions from what a run observed to a verdict.

Nothing here does I/O: the run collects the observations (the history, each
learner's final state, each acceptor's accepted proposals, each process's
exit and log) into the dataclasses below, and every checker is a function of
them. That is what lets tests feed fabricated bad observations and see the
verdict turn to "violation" (tests/chaos/test_checkers.py).

A run passes only if every check's status is ``ok``:

============== =================================================================
check          holds when
============== =================================================================
linearizable   every key's history is linearizable (Wing-Gong/Porcupine search,
               :func:`paxos_testing.linearizability.check_history`). The history
               ends with a linearizable read of every key after the final heal,
               so an acknowledged write that is lost fails this check.
agreement      every learner, caught up after the final heal, has applied the
               log through the same instance and holds the same state: the same
               store revision and the same keys with the same values, versions
               and revisions (the learners apply the log in order, so equal
               states at equal revisions mean equal logs).
acceptors      per instance, the acceptors' durable state is consistent with
               one chosen value: one value per ballot, and if a majority
               accepted (b, v), every acceptor that accepted a higher ballot
               holds v (P2 of "Paxos Made Simple").
validity       every value in the learners' state was written by some client.
processes      no process exited unless the nemesis killed it, and no log holds
               a Traceback or a critical line, except the incarnation a storage
               fault targeted (it is expected to log its storage error).
stop-voting    an acceptor whose fsync failed or whose disk filled stopped
               voting: it logged the failed commit and its health went
               NOT_SERVING before it was restarted.
============== =================================================================

A check that could not decide (the linearizability search ran out of
budget) is ``inconclusive``, which fails the run too, with its own exit code.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Literal, TypeAlias

from paxos_testing.linearizability import Operation, check_history

CheckStatus: TypeAlias = Literal["ok", "violation", "inconclusive"]
Verdict: TypeAlias = Literal["pass", "violation", "inconclusive"]
#: A ballot as (round, proposer_id): totally ordered.
Ballot: TypeAlias = tuple[int, int]


@dataclass(frozen=True)
class Check:
    name: str
    status: CheckStatus
    detail: str
    problems: tuple[str, ...] = ()


@dataclass(frozen=True)
class KeyState:
    key: str
    value: bytes
    version: int
    create_revision: int
    mod_revision: int


@dataclass(frozen=True)
class LearnerState:
    """A learner's state after the final heal (a stale Range of every key)."""

    name: str
    #: None if the learner could not be read.
    revision: int | None
    applied_instance: int | None
    keys: tuple[KeyState, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class AcceptedEntry:
    instance: int
    ballot: Ballot
    value: bytes


@dataclass(frozen=True)
class AcceptorState:
    name: str
    entries: tuple[AcceptedEntry, ...] = ()
    error: str | None = None


@dataclass(frozen=True)
class ProcessRecord:
    """One incarnation of one node, as the run saw it before tearing down."""

    node: str
    start: int
    #: None: still running at the end. Negative: the signal that ended it.
    exit_code: int | None
    killed_by_nemesis: bool
    #: The incarnation a storage fault (fsync, disk-full) hit.
    storage_target: bool
    tracebacks: int = 0
    critical_lines: tuple[str, ...] = ()
    #: It logged "commit failed; acceptor stops voting".
    stopped_voting: bool = False


@dataclass(frozen=True)
class StorageFault:
    """An fsync or disk-full fault, and what the nemesis saw of its target."""

    index: int
    kind: str
    node: str
    start: int
    saw_not_serving: bool


@dataclass(frozen=True)
class Observations:
    history: Sequence[Operation]
    learners: Sequence[LearnerState]
    acceptors: Sequence[AcceptorState]
    processes: Sequence[ProcessRecord]
    storage_faults: Sequence[StorageFault] = ()
    #: Budget for the linearizability search, in seconds.
    linearizability_budget: float = 120.0


@dataclass(frozen=True)
class Result:
    verdict: Verdict
    checks: tuple[Check, ...] = field(default_factory=tuple)

    @property
    def violations(self) -> list[str]:
        return [f"{c.name}: {p}" for c in self.checks if c.status != "ok" for p in c.problems]


def check_linearizable(history: Sequence[Operation], budget: float) -> Check:
    result = check_history(history, timeout_seconds=budget)
    if result.linearizable:
        return Check("linearizable", "ok", result.explanation)
    if result.timed_out:
        return Check("linearizable", "inconclusive", result.explanation, (result.explanation,))
    return Check("linearizable", "violation", result.explanation, (result.explanation,))


def check_agreement(learners: Sequence[LearnerState]) -> Check:
    problems: list[str] = []
    readable = [s for s in learners if s.error is None]
    for s in learners:
        if s.error is not None:
            problems.append(f"{s.name} could not be read after the final heal: {s.error}")
    if len(readable) >= 2:
        first = readable[0]
        for other in readable[1:]:
            problems += _differences(first, other)
    if problems:
        return Check("agreement", "violation", f"{len(problems)} differences", tuple(problems))
    revisions = {s.revision for s in readable}
    return Check(
        "agreement",
        "ok",
        f"{len(readable)} learners identical: revision {revisions.pop() if revisions else '-'}, "
        f"{len(readable[0].keys) if readable else 0} keys",
    )


def _differences(a: LearnerState, b: LearnerState) -> list[str]:
    out = []
    if a.revision != b.revision:
        out.append(f"{a.name} is at revision {a.revision}, {b.name} at {b.revision}")
    if a.applied_instance != b.applied_instance:
        out.append(
            f"{a.name} applied the log through instance {a.applied_instance}, {b.name} through "
            f"{b.applied_instance} (they did not converge after the final heal)"
        )
    mine = {k.key: k for k in a.keys}
    theirs = {k.key: k for k in b.keys}
    for key in sorted(mine.keys() | theirs.keys()):
        x, y = mine.get(key), theirs.get(key)
        if x != y:
            out.append(f"key {key!r}: {a.name} has {_show(x)}, {b.name} has {_show(y)}")
    return out


def _show(k: KeyState | None) -> str:
    if k is None:
        return "nothing"
    return f"{k.value!r} (version {k.version}, mod_revision {k.mod_revision})"


def check_acceptors(acceptors: Sequence[AcceptorState]) -> Check:
    problems = [f"{a.name} could not be read: {a.error}" for a in acceptors if a.error]
    n = len(acceptors)
    majority = n // 2 + 1
    by_instance: dict[int, list[tuple[str, AcceptedEntry]]] = defaultdict(list)
    for a in acceptors:
        for e in a.entries:
            by_instance[e.instance].append((a.name, e))
    chosen_count = 0
    for instance in sorted(by_instance):
        entries = by_instance[instance]
        values_by_ballot: dict[Ballot, set[bytes]] = defaultdict(set)
        for _, e in entries:
            values_by_ballot[e.ballot].add(e.value)
        for ballot, values in values_by_ballot.items():
            if len(values) > 1:
                problems.append(f"instance {instance}: ballot {ballot} has {len(values)} values")
        votes = Counter(e.ballot for _, e in entries)
        chosen = [b for b, count in votes.items() if count >= majority]
        if not chosen:
            continue
        chosen_count += 1
        ballot = min(chosen)
        value = next(iter(values_by_ballot[ballot]))
        for name, e in entries:
            if e.ballot > ballot and e.value != value:
                problems.append(
                    f"instance {instance}: a majority accepted ballot {ballot}, but {name} "
                    f"accepted a different value at the higher ballot {e.ballot}"
                )
    if problems:
        return Check("acceptors", "violation", f"{len(problems)} problems", tuple(problems))
    return Check(
        "acceptors",
        "ok",
        f"{len(by_instance)} instances, {chosen_count} chosen by a majority, all consistent",
    )


def check_validity(history: Iterable[Operation], learners: Sequence[LearnerState]) -> Check:
    written = {op.value for op in history if op.kind in ("put", "cas") and op.value is not None}
    problems = [
        f"{s.name} holds {k.key!r} = {k.value!r}, which no client wrote"
        for s in learners
        for k in s.keys
        if k.value not in written
    ]
    if problems:
        return Check("validity", "violation", f"{len(problems)} values", tuple(problems))
    return Check("validity", "ok", "every value held was written by a client")


def check_processes(processes: Sequence[ProcessRecord]) -> Check:
    problems = []
    expected_noise = 0
    for p in processes:
        who = f"{p.node} (start {p.start})"
        if p.exit_code is not None and not p.killed_by_nemesis:
            problems.append(f"{who} exited with {p.exit_code} without being killed")
        noisy = p.tracebacks or p.critical_lines
        if noisy and p.storage_target:
            expected_noise += 1
        elif p.tracebacks:
            problems.append(f"{who} logged {p.tracebacks} Traceback(s)")
        elif p.critical_lines:
            problems.append(f"{who} logged critical: {p.critical_lines[0][:300]}")
    if problems:
        return Check("processes", "violation", f"{len(problems)} problems", tuple(problems))
    detail = f"{len(processes)} incarnations, no unexpected exit or traceback"
    if expected_noise:
        detail += f" ({expected_noise} storage-fault targets logged their storage error)"
    return Check("processes", "ok", detail)


def check_stop_voting(faults: Sequence[StorageFault], processes: Sequence[ProcessRecord]) -> Check:
    incarnations = {(p.node, p.start): p for p in processes}
    problems = []
    exercised = 0
    for f in faults:
        p = incarnations.get((f.node, f.start))
        if p is None or not p.stopped_voting:
            continue  # no commit was attempted while the fault was on
        exercised += 1
        if not f.saw_not_serving:
            problems.append(
                f"fault {f.index} ({f.kind}) on {f.node}: its commit failed, but its health "
                "never went NOT_SERVING"
            )
    if problems:
        return Check("stop-voting", "violation", f"{len(problems)} problems", tuple(problems))
    if not faults:
        return Check("stop-voting", "ok", "no storage fault in this run")
    return Check(
        "stop-voting",
        "ok",
        f"{exercised} of {len(faults)} storage faults hit a commit; each target stopped voting",
    )


def judge(obs: Observations) -> Result:
    """Run every checker; the verdict is the worst status."""
    checks = (
        check_linearizable(obs.history, obs.linearizability_budget),
        check_agreement(obs.learners),
        check_acceptors(obs.acceptors),
        check_validity(obs.history, obs.learners),
        check_processes(obs.processes),
        check_stop_voting(obs.storage_faults, obs.processes),
    )
    return Result(verdict_of(checks), checks)


def verdict_of(checks: Iterable[Check]) -> Verdict:
    statuses = {c.status for c in checks}
    if "violation" in statuses:
        return "violation"
    if "inconclusive" in statuses:
        return "inconclusive"
    return "pass"


def scan_log(text: str) -> tuple[int, tuple[str, ...], bool]:
    """(Tracebacks, critical lines, logged "stops voting") in a node's log."""
    tracebacks = text.count("Traceback (most recent call last)")
    critical = tuple(line for line in text.splitlines() if '"level": "critical"' in line)
    return tracebacks, critical, "acceptor stops voting" in text


def as_mapping(result: Result) -> Mapping[str, object]:
    return {
        "verdict": result.verdict,
        "checks": [
            {"name": c.name, "status": c.status, "detail": c.detail, "problems": list(c.problems)}
            for c in result.checks
        ],
    }
