"""The deterministic simulation of the real service code (tests/simulation/realsim).

Each seed runs a whole cluster (the real acceptor servicer with its memory
window and group commit, log and proposer drivers, learners with their replica
and appender, the identity guard, over real SQLite files) on virtual time,
with crashes, partitions, lost, delayed and duplicated messages, slow storage,
fsync failures and memory windows of a few instances; then it checks
agreement, the learners, single-decree answers, linearizability, "every
answer is true", exactly-once and liveness after the heal.

The seeds run in worker processes through the same command as ``make sim``
(``python -m tests.simulation.realsim``), so a failing seed printed here
replays exactly with ``make sim SEED=<n>``.

    PAXOS_SIM_SEEDS=<n>   how many seeds ``make test`` runs (default 300)
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from tests.simulation.realsim.run import run_seed

ROOT = Path(__file__).resolve().parents[2]
SEEDS = int(os.environ.get("PAXOS_SIM_SEEDS") or 300)


def simulate(*args: str, timeout: float = 1500) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PYTHONHASHSEED": "0"}
    return subprocess.run(
        [sys.executable, "-m", "tests.simulation.realsim", *args],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )


@pytest.mark.timeout(1500)  # a loaded machine: the subprocess has its own deadline
def test_the_real_code_keeps_every_promise_over_many_seeds() -> None:
    done = simulate("--seeds", str(SEEDS))
    assert done.returncode == 0, done.stdout[-20000:] + done.stderr[-5000:]
    assert f"simulation: {SEEDS} seeds from 0" in done.stdout, done.stdout[-2000:]


@pytest.mark.parametrize(
    "mode",
    [
        # Race 1: no step lock, so an eviction runs during a range read.
        "unatomic-range-read",
        # Race 2: the range-promise floor read before the step's disk read.
        "stale-floor",
    ],
)
@pytest.mark.timeout(1500)
def test_the_simulation_catches_each_acceptor_race_when_it_is_put_back(mode: str) -> None:
    """The broken variants live in tests/simulation/realsim/broken.py; each
    must be caught within the seeds that ``make test`` runs, by a safety
    checker (agreement or the learners'), not by luck."""
    # Up to twice the seeds of the main run, stopping at the first catch: a
    # PrepareRange reads only above what the acceptor knows is chosen, so it
    # rarely waits for the disk, which is the window these races need; the
    # real code is less exposed and a variant may need more schedules to show
    # (today race 1 shows at seed 65, race 2 at seed 132; both deterministic).
    seeds = 2 * SEEDS
    done = simulate("--seeds", str(seeds), "--broken", mode, "--stop-on-failure")
    assert done.returncode == 1, done.stdout[-5000:] + done.stderr[-5000:]
    assert any(
        f"  {checker}:" in done.stdout
        for checker in ("acceptor-word", "agreement", "learners", "single-decree", "linearizable")
    ), done.stdout[-5000:]


def test_a_seed_replays_exactly() -> None:
    """Same seed, same run: every operation, vote and applied entry."""
    first, second = run_seed(7), run_seed(7)
    assert (first.ops, first.ok, first.votes, first.applied_instances, first.events) == (
        second.ops,
        second.ok,
        second.votes,
        second.applied_instances,
        second.events,
    )
    assert first.votes > 0 and first.ok > 0
