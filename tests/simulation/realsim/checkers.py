"""What must hold after every simulated run. Each checker returns a list of
violations (empty: it holds), in words that name the instance or request.

* **Agreement** ("Paxos Made Simple", 2.1): per instance, at most one value is
  chosen, judged from every vote any acceptor made durable; and no ballot is
  used for two different values at one instance.
* **Learners agree:** every learner applied the same entry at every instance
  both applied, and that entry is what was chosen there.
* **Single-decree answers:** a Propose answered OK named the chosen value.
* **Linearizable:** the KV history, with the project's checker.
* **Every answer is true:** an operation answered failed was never applied.
* **Exactly-once:** no (client, sequence) took effect twice.
"""

from __future__ import annotations

from collections import defaultdict

from paxos_service.core import log_entry
from paxos_service.v1 import paxos_pb2 as pb
from paxos_testing.linearizability import check_history
from tests.simulation.realsim.cluster import Recorder
from tests.simulation.realsim.workload import History


def chosen_values(recorder: Recorder, acceptors: int) -> tuple[dict[int, set[bytes]], list[str]]:
    """Per instance, every value a majority accepted under one ballot."""
    voters: dict[tuple[int, object, bytes], set[int]] = defaultdict(set)
    by_ballot: dict[tuple[int, object], set[bytes]] = defaultdict(set)
    for vote in recorder.votes:
        voters[(vote.instance, vote.ballot, vote.value)].add(vote.acceptor)
        by_ballot[(vote.instance, vote.ballot)].add(vote.value)
    problems = [
        f"instance {instance}: ballot {ballot} was used for {len(values)} different values"
        for (instance, ballot), values in sorted(by_ballot.items(), key=lambda kv: kv[0][0])
        if len(values) > 1
    ]
    chosen: dict[int, set[bytes]] = defaultdict(set)
    for (instance, _ballot, value), who in voters.items():
        if len(who) > acceptors // 2:
            chosen[instance].add(value)
    return chosen, problems


def check_agreement(recorder: Recorder, acceptors: int) -> list[str]:
    chosen, problems = chosen_values(recorder, acceptors)
    for instance in sorted(chosen):
        if len(chosen[instance]) > 1:
            shown = sorted(v[:40] for v in chosen[instance])
            problems.append(f"instance {instance}: {len(shown)} values chosen: {shown}")
    return problems


def check_learners(recorder: Recorder, acceptors: int) -> list[str]:
    chosen, _ = chosen_values(recorder, acceptors)
    problems: list[str] = []
    seen: dict[int, tuple[int, bytes]] = {}
    for item in recorder.applied:
        first = seen.setdefault(item.instance, (item.learner, item.entry))
        if first[1] != item.entry:
            problems.append(
                f"instance {item.instance}: learner {first[0]} applied {first[1][:60]!r}, "
                f"learner {item.learner} applied {item.entry[:60]!r}"
            )
        values = chosen.get(item.instance)
        if not values:
            continue
        (value,) = sorted(values)[:1]
        entry = log_entry.decode(value)
        if entry is not None and entry.SerializeToString() != item.entry:
            problems.append(
                f"instance {item.instance}: learner {item.learner} applied an entry that "
                "is not the chosen value"
            )
    return problems


def check_proposals(recorder: Recorder, acceptors: int) -> list[str]:
    """Every answered Propose names the value chosen for its instance, recorded
    under the acceptors' key (-k for single-decree instance k, k for the
    log's: ``state_key`` in servers/acceptor.py)."""
    chosen, _ = chosen_values(recorder, acceptors)
    return [
        f"Propose at key {key} answered {value!r}, chosen: {sorted(chosen[key])}"
        for key, value in recorder.proposals
        if chosen.get(key) != {value}
    ]


def check_linearizable(history: History) -> list[str]:
    result = check_history([op.op for op in history.ops], timeout_seconds=30)
    if result.linearizable:
        return []
    return [f"not linearizable: {result.explanation}"]


def _effects(recorder: Recorder) -> dict[tuple[int, int], dict[int, set[int]]]:
    """Per (client, sequence): per learner, the revisions at which it took effect."""
    found: dict[tuple[int, int], dict[int, set[int]]] = defaultdict(lambda: defaultdict(set))
    for item in recorder.applied:
        entry = pb.LogEntry.FromString(item.entry)
        for command, result in zip(entry.commands, item.results, strict=False):
            if result.error:
                continue
            found[(command.client_id, command.sequence)][item.learner].add(result.revision)
    return found


def check_answers_true(recorder: Recorder, history: History) -> list[str]:
    effects = _effects(recorder)
    return [
        f"client {op.client_id} request {op.sequence} ({op.op.kind} {op.op.key}) was answered "
        f"failed ({op.last_error}) but was applied"
        for op in history.ops
        if op.op.status == "fail" and (op.client_id, op.sequence) in effects
    ]


def check_exactly_once(recorder: Recorder) -> list[str]:
    return [
        f"client {client} request {sequence} took effect at revisions {sorted(revisions)} "
        f"on learner {learner}"
        for (client, sequence), per_learner in sorted(_effects(recorder).items())
        for learner, revisions in sorted(per_learner.items())
        if len(revisions) > 1
    ]
