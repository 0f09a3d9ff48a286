"""Seeded simulation of the Multi-Paxos leader path (see :mod:`tests.simulation.multipaxos`).

Three proposers run :class:`roles.Leader`; acceptors keep per-instance state and
a range promise on a "disk"; learners apply the log in order to an exactly-once
state machine; clients retry through redirects, unknown outcomes and timeouts.
Every run is checked for agreement per instance ("Paxos Made Simple", 2.1, by
the vote log, every leader and every learner at once), identical applied
prefixes, validity (only submitted commands, no-ops only in holes, section 3)
and exactly-once application. After the network heals, the cluster must
converge: one leader that everyone follows, every command applied everywhere.

Seeds:
    PAXOS_SIM_SEEDS=<n>  run seeds 0..n-1 (default 200)
    PAXOS_SIM_SEED=<n>   run only seed n (a replay)
    PAXOS_SIM_TRACE=1    with PAXOS_SIM_SEED, print the run's event trace (pytest shows
                         it for a failing run; add -s to see it for a passing one)
"""

from __future__ import annotations

import copy
import os
from collections import Counter
from collections.abc import Callable

import pytest

from roles import Acceptor, Leader, Role
from tests.simulation.multipaxos import (
    NOOP,
    AcceptorFactory,
    AmnesiacLeader,
    FloorIgnoringAcceptor,
    LeaderFactory,
    MultiConfig,
    MultiResult,
    check_convergence,
    check_safety,
    duel_config,
    faulty_config,
    run_seed,
)

DEFAULT_SEEDS = 200
BATCH = 50
FILE = "tests/simulation/test_multipaxos.py"


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
        f"replay: PAXOS_SIM_SEED={seed} .venv/bin/pytest {FILE} -k {test} "
        "(add PAXOS_SIM_TRACE=1 -s for the event trace)"
    )


def run_and_check(seeds: list[int], config: Callable[[int], MultiConfig], test: str) -> None:
    failures: list[str] = []
    for seed in seeds:
        result = run_seed(seed, config(seed), trace=TRACE)
        problems = [f"  safety: {v}" for v in check_safety(result)]
        problems += [f"  liveness: {p}" for p in check_convergence(result)]
        if TRACE:
            print("\n".join(result.trace))
        if problems:
            failures.append("\n".join([result.describe(), *problems, "  " + replay(seed, test)]))
    assert not failures, f"{len(failures)} of {len(seeds)} seeds failed:\n" + "\n".join(failures)


@pytest.mark.parametrize("seeds", SEED_BATCHES, ids=batch_id)
def test_multipaxos_is_safe_and_converges_under_faults(seeds: list[int]) -> None:
    """Loss, duplication, reordering, partitions (the leader alone, too),
    leader crashes (restarting with chosen_through=0), acceptor crash-restarts
    and forced duels, with random windows and batch sizes; then a healed
    network in which every command must be applied exactly once."""
    run_and_check(seeds, faulty_config, "test_multipaxos_is_safe_and_converges_under_faults")


@pytest.mark.parametrize("seeds", SEED_BATCHES, ids=batch_id)
def test_duelling_leaders_stay_safe_and_converge(seeds: list[int]) -> None:
    """Section 3's warning case: several proposers believe they lead. Slow
    messages, many forced duels and isolated leaders whose Accepts are still
    in flight when another leader has the acceptors' promises."""
    run_and_check(seeds, duel_config, "test_duelling_leaders_stay_safe_and_converge")


def test_a_fault_free_run_elects_one_leader_and_batches_commands() -> None:
    config = MultiConfig(n_clients=4, commands_per_client=30, client_concurrency=5)
    result = run_seed(1, config)
    assert check_safety(result) == []
    assert check_convergence(result) == []
    assert [role for _, role, _ in result.final_roles].count(Role.LEADER) == 1
    assert result.stats["multi_command_batches"] > 0
    assert result.stats["chosen"] < len(result.submitted)  # fewer instances than commands
    assert result.stats["noops_chosen"] == 0
    assert result.stats["duplicates_skipped"] == 0
    for learner in result.learners:
        assert sorted(learner.applied_commands) == sorted(result.submitted)


def test_a_seed_replays_exactly() -> None:
    """The promise behind every "replay:" line: a seed is the whole schedule."""
    first = run_seed(7, faulty_config(7), trace=True)
    second = run_seed(7, faulty_config(7), trace=True)
    assert first.trace == second.trace
    assert first.votes == second.votes
    assert first.events == second.events > 0
    assert run_seed(8, faulty_config(7), trace=True).trace != first.trace


def test_faulty_runs_really_exercise_the_leader_path() -> None:
    """Guard against a harness that silently stopped injecting faults, or a
    schedule too gentle to reach the interesting code: across a few seeds,
    every fault happens and every recovery path of the leader is taken."""
    stats: Counter[str] = Counter()
    for seed in range(40):
        stats.update(run_seed(seed, faulty_config(seed)).stats)
    # Holes (no-ops) are rare since pre-vote made leader changes gentler.
    for seed in range(60):
        stats.update(run_seed(seed, duel_config(seed)).stats)
    for key in (
        "dropped",
        "duplicated",
        "partitioned",
        "leader_isolations",
        "proposer_crashes",
        "acceptor_crashes",
        "duels",
        "step_downs",
        "retransmissions",
        "outcome_unknown",
        "client_rejected",
        "client_timeouts",
        "multi_command_batches",
        "recovered_instances",
        "noops_chosen",
        "restarted_leader_recovered_from_1",
        "duplicates_skipped",
        "pre_votes",
    ):
        assert stats[key] > 0, key
    assert stats["elections"] > 60


# The checker can fail ---------------------------------------------------------------


BROKEN = [
    pytest.param(AmnesiacLeader, Acceptor, faulty_config, id="leader-ignores-promised-values"),
    pytest.param(Leader, FloorIgnoringAcceptor, duel_config, id="acceptor-ignores-range-floor"),
]


@pytest.mark.parametrize(("leader", "acceptor", "config"), BROKEN)
def test_checker_catches_a_broken_variant(
    leader: LeaderFactory,
    acceptor: AcceptorFactory,
    config: Callable[[int], MultiConfig],
) -> None:
    """The same harness and schedules, with a leader that skips P2c in phase 1
    or an acceptor that forgets its range promise when accepting: the checker
    must find two values chosen for one instance. The correct pair on the
    very same schedule must be clean, so the variant made the difference."""
    caught: list[int] = []
    for seed in range(200):
        result = run_seed(seed, config(seed), leader_factory=leader, acceptor_factory=acceptor)
        if any(v.kind == "conflicting-choice" for v in check_safety(result)):
            caught.append(seed)
            if len(caught) == 3:
                break
    assert caught, "no seed in 0..199 exposed the broken variant: the checker is blind"
    for seed in caught:
        correct = run_seed(seed, config(seed))
        assert check_safety(correct) == [], replay(seed, "test_checker_catches_a_broken_variant")
        assert check_convergence(correct) == [], replay(seed, "test_checker_catches")


# The checker on doctored results ------------------------------------------------------


@pytest.fixture(scope="module")
def clean() -> MultiResult:
    result = run_seed(3, faulty_config(3))
    assert check_safety(result) == []
    assert check_convergence(result) == []
    return result


def kinds(result: MultiResult) -> set[str]:
    return {v.kind for v in check_safety(result)}


def test_checker_flags_a_learner_whose_log_diverges(clean: MultiResult) -> None:
    result = copy.deepcopy(clean)
    result.learners[1].applied_values[0] = NOOP
    assert result.learners[0].applied_values[0] != NOOP
    assert "divergent-log" in kinds(result)


def test_checker_flags_a_command_applied_twice(clean: MultiResult) -> None:
    result = copy.deepcopy(clean)
    for learner in result.learners:
        learner.applied_commands.append(learner.applied_commands[0])
    assert kinds(result) == {"applied-twice"}


def test_checker_flags_a_noop_that_fills_no_hole(clean: MultiResult) -> None:
    result = copy.deepcopy(clean)
    top = max(result.first_accept_at)
    result.first_noop_at[top + 1] = result.end_time
    assert kinds(result) == {"noop-not-filling-a-hole"}


def test_checker_flags_a_command_nobody_submitted(clean: MultiResult) -> None:
    result = copy.deepcopy(clean)
    result.submitted = set(sorted(result.submitted)[1:])
    assert "invalid-value" in kinds(result)


def test_checker_flags_two_values_under_one_ballot(clean: MultiResult) -> None:
    result = copy.deepcopy(clean)
    vote = result.votes[-1]
    forged = type(vote)(vote.instance, vote.ballot, vote.acceptor_id, NOOP + b"x")
    result.votes.append(forged)
    assert "ballot-with-two-values" in kinds(result)


def test_convergence_check_flags_two_leaders_and_unapplied_commands(clean: MultiResult) -> None:
    result = copy.deepcopy(clean)
    result.final_roles = [(pid, Role.LEADER, pid) for pid, _, _ in result.final_roles]
    result.submitted = result.submitted | {"c9.9"}
    result.converged = False
    problems = check_convergence(result)
    assert any("did not converge" in p for p in problems)
    assert any("3 leaders" in p for p in problems)
    assert any("never applied 1 commands" in p for p in problems)
