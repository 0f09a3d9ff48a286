"""Seeded simulation of a whole cluster (see :mod:`tests.simulation.network`).

Every run is checked for the safety requirements of "Paxos Made Simple",
section 2.1 (only a proposed value is chosen, only a single value is chosen)
by every observer at once: the log of all votes, each proposer's ``Chosen``
and the learner. After the network heals, every instance must be decided.

Seeds:
    PAXOS_SIM_SEEDS=<n>  run seeds 0..n-1 (default 300)
    PAXOS_SIM_SEED=<n>   run only seed n (a replay)
    PAXOS_SIM_TRACE=1    with PAXOS_SIM_SEED, print the event trace of a failing run (use -s
                         to see it even when the run passes)
"""

from __future__ import annotations

import dataclasses
import os
from collections.abc import Callable

import pytest

from roles import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    AcceptorStep,
    Ballot,
    Chosen,
    Decide,
    Learner,
    Prepare,
)
from tests.simulation.network import (
    AcceptorFactory,
    SimConfig,
    SimResult,
    benign_config,
    check_liveness,
    check_safety,
    crash_heavy_config,
    faulty_config,
    run_seed,
)

DEFAULT_SEEDS = 300
BATCH = 100


def selected_seeds() -> list[int]:
    one = os.environ.get("PAXOS_SIM_SEED")
    if one is not None:
        return [int(one)]
    return list(range(int(os.environ.get("PAXOS_SIM_SEEDS", str(DEFAULT_SEEDS)))))


def seed_batches() -> list[list[int]]:
    seeds = selected_seeds()
    return [seeds[i : i + BATCH] for i in range(0, len(seeds), BATCH)]


def batch_id(batch: list[int]) -> str:
    return f"seed{batch[0]}" if len(batch) == 1 else f"seeds{batch[0]}-{batch[-1]}"


TRACE = os.environ.get("PAXOS_SIM_TRACE") == "1" and "PAXOS_SIM_SEED" in os.environ
SEED_BATCHES = seed_batches()


def replay(seed: int, test: str) -> str:
    return (
        f"replay: PAXOS_SIM_SEED={seed} pytest tests/simulation -k {test} "
        f"(add PAXOS_SIM_TRACE=1 -s for the event trace)"
    )


def run_and_check(
    seeds: list[int],
    config: Callable[[int], SimConfig],
    test: str,
    *,
    liveness: bool,
) -> None:
    failures: list[str] = []
    for seed in seeds:
        result = run_seed(seed, config(seed), trace=TRACE)
        problems = [f"  safety: {v}" for v in check_safety(result)]
        if liveness:
            problems += [f"  liveness: {p}" for p in check_liveness(result)]
        if problems:
            failures.append("\n".join([result.describe(), *problems, "  " + replay(seed, test)]))
            if TRACE:
                print("\n".join(result.trace))
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("seeds", SEED_BATCHES, ids=batch_id)
def test_safety_under_faults(seeds: list[int]) -> None:
    """Drops, duplicates, reordering, partitions and acceptor crash-restarts,
    then a healed network: at most one value is chosen per instance, it is a
    proposed one, and (after healing) every instance is decided."""
    run_and_check(seeds, faulty_config, "test_safety_under_faults", liveness=True)


@pytest.mark.parametrize("seeds", SEED_BATCHES, ids=batch_id)
def test_safety_under_crash_restarts(seeds: list[int]) -> None:
    """A hundred brief acceptor crashes per run while slow messages are in
    flight. Only persisted state survives a crash, so this is where an acceptor
    that replied before persisting would lose a promise."""
    run_and_check(seeds, crash_heavy_config, "test_safety_under_crash_restarts", liveness=True)


@pytest.mark.parametrize("seeds", SEED_BATCHES, ids=batch_id)
def test_liveness_without_faults(seeds: list[int]) -> None:
    """No loss and no crash (but delays, reordering and duplicates, and two to
    four duelling proposers): every instance is decided and every proposer
    learns the outcome before its deadline."""
    run_and_check(seeds, benign_config, "test_liveness_without_faults", liveness=True)


def test_a_seed_replays_exactly() -> None:
    """The promise behind every "replay:" line: a seed is the whole schedule."""
    first = run_seed(7, faulty_config(7), trace=True)
    second = run_seed(7, faulty_config(7), trace=True)
    assert first.trace == second.trace
    assert first.votes == second.votes
    assert first.events == second.events > 0
    assert run_seed(8, faulty_config(7), trace=True).trace != first.trace


def test_faulty_runs_are_really_faulty_and_contended() -> None:
    """Guard against a harness that silently stopped injecting faults: across a
    few seeds, messages are dropped, acceptors crash, partitions happen, some
    proposers adopt another proposer's value and some instances need ballots
    beyond the first."""
    trace: list[str] = []
    adopted = later_rounds = 0
    for seed in range(10):
        result = run_seed(seed, faulty_config(seed), trace=True)
        trace += result.trace
        for outcome in result.outcomes.values():
            assert isinstance(outcome, Chosen)
            adopted += not outcome.own_value_chosen
            later_rounds += outcome.decide.ballot.round > 1
    text = "\n".join(trace)
    for marker in ("drop ", "crash acceptor", "restart acceptor", "partition ", "heal partition"):
        assert marker in text, marker
    assert adopted > 0
    assert later_rounds > 0


# The checker can fail ---------------------------------------------------------------


class ForgetfulAcceptor(Acceptor):
    """Does not make its promises durable (``persist=False`` on Prepare), so a
    crash-restart forgets them: the bug the persist-before-reply rule prevents."""

    def on_prepare(self, state: AcceptorState, msg: Prepare) -> AcceptorStep:
        return dataclasses.replace(super().on_prepare(state, msg), persist=False)


class PromiseBreakingAcceptor(Acceptor):
    """Accepts any ballot not below what it already accepted, ignoring the
    promises it made in phase 1 (violates P1a)."""

    def on_accept(self, state: AcceptorState, msg: Accept) -> AcceptorStep:
        if msg.ballot <= state.accepted_ballot:
            return super().on_accept(state, msg)
        promised = max(state.promised_ballot, msg.ballot)
        new = AcceptorState(promised, msg.ballot, msg.value)
        return AcceptorStep(
            new, Accepted(msg.instance, msg.ballot, self.acceptor_id, msg.value), True
        )


BROKEN = [
    pytest.param(ForgetfulAcceptor, crash_heavy_config, id="forgets-unpersisted-promise"),
    pytest.param(PromiseBreakingAcceptor, faulty_config, id="accepts-below-its-promise"),
]


@pytest.mark.parametrize(("factory", "config"), BROKEN)
def test_checker_catches_a_broken_acceptor(
    factory: AcceptorFactory, config: Callable[[int], SimConfig]
) -> None:
    """The same harness and schedules, with an acceptor that breaks P1a (or the
    persist-before-reply rule): the checker must find two chosen values. The
    correct acceptor on the very same schedule must be clean, which shows that
    the acceptor, not the schedule, made the difference."""
    caught: list[tuple[int, SimResult]] = []
    for seed in range(200):
        result = run_seed(seed, config(seed), acceptor_factory=factory)
        if any(v.kind == "conflicting-choice" for v in check_safety(result)):
            caught.append((seed, result))
            if len(caught) == 3:
                break
    assert caught, f"no seed in 0..199 exposed {factory.__name__}: the checker is blind"
    for seed, _ in caught:
        correct = run_seed(seed, config(seed), acceptor_factory=Acceptor)
        assert check_safety(correct) == [], replay(seed, "test_checker_catches_a_broken_acceptor")


# The checker on hand-made histories ---------------------------------------------------


def b(round_: int, proposer_id: int = 1) -> Ballot:
    return Ballot(round_, proposer_id)


def history(
    votes: list[Accepted], outcomes: dict[tuple[int, int], Chosen | None] | None = None
) -> SimResult:
    config = SimConfig(n_acceptors=3, n_proposers=2, instances=(1,))
    return SimResult(
        seed=0,
        config=config,
        proposed={1: {b"a", b"b"}},
        votes=votes,
        outcomes=dict(outcomes or {}),
        learner=Learner(frozenset({1, 2, 3})),
        learner_errors=[],
        protocol_errors=[],
        events=0,
        end_time=0.0,
        trace=[],
    )


def test_checker_accepts_one_value_chosen_under_two_ballots() -> None:
    votes = [Accepted(1, b(1), 1, b"a"), Accepted(1, b(1), 2, b"a")]
    votes += [Accepted(1, b(2), 2, b"a"), Accepted(1, b(2), 3, b"a")]
    chosen = Chosen(Decide(1, b(2), b"a"), own_value_chosen=True)
    assert check_safety(history(votes, {(1, 1): chosen})) == []


def test_checker_flags_two_majorities_for_different_values() -> None:
    votes = [Accepted(1, b(1), 1, b"a"), Accepted(1, b(1), 2, b"a")]
    votes += [Accepted(1, b(2), 2, b"b"), Accepted(1, b(2), 3, b"b")]
    kinds = [v.kind for v in check_safety(history(votes))]
    assert kinds == ["conflicting-choice"]


def test_checker_does_not_count_a_minority() -> None:
    votes = [Accepted(1, b(1), 1, b"a"), Accepted(1, b(1), 1, b"a")]
    votes += [Accepted(1, b(2), 2, b"b"), Accepted(1, b(2), 3, b"b")]
    assert check_safety(history(votes)) == []


def test_checker_flags_a_choice_nobody_voted_for() -> None:
    chosen = Chosen(Decide(1, b(4), b"a"), own_value_chosen=True)
    kinds = [v.kind for v in check_safety(history([], {(1, 1): chosen}))]
    assert kinds == ["unfounded-choice"]


def test_checker_flags_a_value_never_proposed() -> None:
    votes = [Accepted(1, b(1), 1, b"zzz"), Accepted(1, b(1), 3, b"zzz")]
    kinds = [v.kind for v in check_safety(history(votes))]
    assert kinds == ["invalid-value"]


def test_checker_flags_two_values_under_one_ballot() -> None:
    votes = [Accepted(1, b(1), 1, b"a"), Accepted(1, b(1), 2, b"b")]
    kinds = [v.kind for v in check_safety(history(votes))]
    assert kinds == ["ballot-with-two-values"]


def test_liveness_check_flags_an_undecided_instance() -> None:
    result = history([], {(1, 1): None})
    assert check_liveness(result) == [
        "instance 1: the learner never learned a value",
        "proposer 1, instance 1: ended with None",
    ]
