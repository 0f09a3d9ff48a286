"""The checkers can fail: fabricated bad observations give the verdict "violation".

The chaos run itself passes on a correct cluster, which proves little about its
checkers. These tests feed them observations a broken cluster would produce
(an acknowledged write lost, diverging learners, two values chosen for one
instance, an acceptor that kept voting after its fsync failed, a crash) and
check that each is caught, and that the report and exit status say so.
"""

from __future__ import annotations

import dataclasses
import os
from pathlib import Path

import pytest

from paxos_testing.chaos import checkers, cli, report
from paxos_testing.chaos.checkers import (
    AcceptedEntry,
    AcceptorState,
    KeyState,
    LearnerState,
    Observations,
    ProcessRecord,
    StorageFault,
)
from paxos_testing.chaos.run import Outcome, RunConfig
from paxos_testing.chaos.schedule import FAULT_KINDS, FaultRecord, PlannedFault, plan_schedule
from paxos_testing.linearizability import Operation

NODES = [f"acceptor-{i}" for i in range(3)] + [f"proposer-{i}" for i in range(3)]
NODES += ["learner-0", "learner-1"]


def put(
    client: int, key: str, value: bytes, t0: float, t1: float | None, status: str = "ok"
) -> Operation:
    return Operation(
        client_id=client,
        kind="put",
        key=key,
        value=value,
        invoke=t0,
        complete=t1,
        status=status,  # type: ignore[arg-type]
    )


def get(client: int, key: str, output: bytes | None, t0: float, t1: float) -> Operation:
    return Operation(
        client_id=client, kind="get", key=key, invoke=t0, complete=t1, status="ok", output=output
    )


def state(name: str, value: bytes = b"v1", revision: int = 1) -> LearnerState:
    return LearnerState(name, revision, 10, (KeyState("chaos/k0", value, 1, 1, revision),))


def acceptor(name: str, *entries: tuple[int, tuple[int, int], bytes]) -> AcceptorState:
    return AcceptorState(name, tuple(AcceptedEntry(i, b, v) for i, b, v in entries))


def process(node: str, start: int = 1, **kw: object) -> ProcessRecord:
    fields: dict[str, object] = {
        "node": node,
        "start": start,
        "exit_code": None,
        "killed_by_nemesis": False,
        "storage_target": False,
    }
    fields.update(kw)
    return ProcessRecord(**fields)  # type: ignore[arg-type]


def good() -> Observations:
    """A small, correct run."""
    history = [
        put(1, "chaos/k0", b"v1", 0.0, 1.0),
        get(2, "chaos/k0", b"v1", 2.0, 3.0),
        put(3, "chaos/k0", b"v2", 4.0, None, status="unknown"),  # may never apply
        get(0, "chaos/k0", b"v1", 10.0, 11.0),  # the final read
    ]
    entry = (1, (1, 0), b"log-entry-1")
    return Observations(
        history=history,
        learners=[state("learner-0"), state("learner-1")],
        acceptors=[
            acceptor("acceptor-0", entry),
            acceptor("acceptor-1", entry),
            acceptor("acceptor-2"),
        ],
        processes=[process(n) for n in NODES],
    )


def statuses(result: checkers.Result) -> dict[str, str]:
    return {c.name: c.status for c in result.checks}


def test_a_correct_run_passes() -> None:
    result = checkers.judge(good())
    assert result.verdict == "pass", result.violations
    assert set(statuses(result).values()) == {"ok"}


def test_a_lost_acknowledged_write_is_a_violation() -> None:
    obs = good()
    # The final read finds the key absent although the put of v1 was acknowledged.
    history = [*obs.history[:-1], get(0, "chaos/k0", None, 10.0, 11.0)]
    result = checkers.judge(dataclasses.replace(obs, history=history))
    assert result.verdict == "violation"
    assert statuses(result)["linearizable"] == "violation"
    assert any("chaos/k0" in v for v in result.violations)


def test_a_stale_read_after_a_write_completed_is_a_violation() -> None:
    history = [
        put(1, "chaos/k1", b"a", 0.0, 1.0),
        put(1, "chaos/k1", b"b", 2.0, 3.0),
        get(2, "chaos/k1", b"a", 4.0, 5.0),  # b was acknowledged before this read began
    ]
    result = checkers.judge(dataclasses.replace(good(), history=history, learners=[]))
    assert statuses(result)["linearizable"] == "violation"


def test_divergent_learners_are_a_violation() -> None:
    obs = dataclasses.replace(
        good(), learners=[state("learner-0", b"v1"), state("learner-1", b"v2", revision=2)]
    )
    result = checkers.judge(obs)
    assert result.verdict == "violation"
    assert statuses(result)["agreement"] == "violation"
    problems = " ".join(result.violations)
    assert "revision" in problems and "chaos/k0" in problems


def test_an_unreadable_learner_is_a_violation() -> None:
    learners = [state("learner-0"), LearnerState("learner-1", None, None, error="UNAVAILABLE")]
    result = checkers.judge(dataclasses.replace(good(), learners=learners))
    assert statuses(result)["agreement"] == "violation"


def test_two_values_chosen_for_one_instance_is_a_violation() -> None:
    # A majority accepted x at ballot (1, 0); then an acceptor holds y at a
    # higher ballot: a proposer that did not adopt the chosen value.
    acceptors = [
        acceptor("acceptor-0", (7, (1, 0), b"x")),
        acceptor("acceptor-1", (7, (1, 0), b"x")),
        acceptor("acceptor-2", (7, (2, 1), b"y")),
    ]
    result = checkers.judge(dataclasses.replace(good(), acceptors=acceptors))
    assert statuses(result)["acceptors"] == "violation"
    assert "instance 7" in " ".join(result.violations)


def test_one_ballot_with_two_values_is_a_violation() -> None:
    acceptors = [
        acceptor("acceptor-0", (3, (4, 1), b"x")),
        acceptor("acceptor-1", (3, (4, 1), b"y")),
        acceptor("acceptor-2"),
    ]
    assert (
        statuses(checkers.judge(dataclasses.replace(good(), acceptors=acceptors)))["acceptors"]
        == "violation"
    )


def test_a_value_no_client_wrote_is_a_violation() -> None:
    obs = dataclasses.replace(good(), learners=[state("learner-0", b"forged")] * 2)
    assert statuses(checkers.judge(obs))["validity"] == "violation"


def test_an_unexpected_exit_or_traceback_is_a_violation() -> None:
    crashed = [*good().processes[1:], process("acceptor-0", exit_code=1)]
    result = checkers.judge(dataclasses.replace(good(), processes=crashed))
    assert statuses(result)["processes"] == "violation"
    noisy = [*good().processes[1:], process("acceptor-0", tracebacks=1)]
    assert (
        statuses(checkers.judge(dataclasses.replace(good(), processes=noisy)))["processes"]
        == "violation"
    )


def test_the_nemesis_targets_may_die_and_log_their_storage_error() -> None:
    processes = [
        *good().processes,
        process("acceptor-0", start=2, exit_code=-9, killed_by_nemesis=True),
        process("acceptor-1", start=2, tracebacks=1, storage_target=True, stopped_voting=True),
    ]
    faults = [StorageFault(0, "fsync", "acceptor-1", 2, saw_not_serving=True)]
    obs = dataclasses.replace(good(), processes=processes, storage_faults=faults)
    assert checkers.judge(obs).verdict == "pass"


def test_an_acceptor_that_keeps_serving_after_its_commit_failed_is_a_violation() -> None:
    processes = [*good().processes, process("acceptor-1", start=2, stopped_voting=True)]
    faults = [StorageFault(0, "fsync", "acceptor-1", 2, saw_not_serving=False)]
    obs = dataclasses.replace(good(), processes=processes, storage_faults=faults)
    assert statuses(checkers.judge(obs))["stop-voting"] == "violation"


def test_the_report_and_exit_status_say_violation() -> None:
    obs = dataclasses.replace(
        good(), learners=[state("learner-0", b"v1"), state("learner-1", b"v2", revision=2)]
    )
    result = checkers.judge(obs)
    summary = report.summarize(
        report.RunInfo(
            seed=7,
            duration=20.0,
            elapsed=25.0,
            replay="python -m paxos_testing.chaos --duration 20s --seed 7",
        ),
        history=obs.history,
        records=[],
        result=result,
        errors={},
        gaps=[],
        notes=[],
    )
    table = report.format_table(summary)
    assert summary["verdict"] == "violation" and summary["violations"]
    assert "verdict: VIOLATION" in table
    assert "--seed 7" in table


def test_the_schedule_is_a_function_of_the_seed() -> None:
    a = plan_schedule(11, 300, NODES)
    assert a == plan_schedule(11, 300, NODES)
    assert a != plan_schedule(12, 300, NODES)
    # Every kind comes once before any repeats.
    assert {f.kind for f in a[: len(FAULT_KINDS)]} == set(FAULT_KINDS)
    for f in a:
        assert f.end + f.heal_duration <= 300
    # Each kind's parameters are planned with it.
    for f in a:
        if f.kind == "slow-link":
            assert f.params["rate_kbit"] in (64, 128, 256, 512)
        if f.kind == "split-brain":
            assert f.target == "leader" and f.params["learner"] in ("learner-0", "learner-1")
    majority = [f for f in a if f.kind == "partition-majority"]
    for f in majority:  # the minority never holds more than one acceptor
        assert sum(n.startswith("acceptor-") for n in f.params["minority"]) == 1


def test_the_short_runs_schedule_is_what_its_test_says() -> None:
    from tests.chaos.test_chaos_short import DURATION, SEED

    planned = plan_schedule(SEED, float(DURATION.rstrip("s")), NODES)
    assert [f.kind for f in planned] == ["split-brain", "fsync", "pause-leader"]


def test_availability_gaps() -> None:
    assert report.longest_gap([1.0, 2.0, 2.5], 0.0, 4.0) == 1.5
    assert report.longest_gap([], 3.0, 5.0) == 2.0
    fault = PlannedFault(0, "kill-leader", 10.0, 4.0, 4.0, "leader")
    record = FaultRecord(fault, started=10.0, healed=14.0, targets=["proposer-0"], hit_leader=True)
    history = [put(1, "k", b"%d" % i, t - 0.01, t) for i, t in enumerate([9.9, 10.2, 12.9, 14.5])]
    (row,) = report.availability([record], history, end=20.0)
    assert row["gap_during"] == 2.7  # 10.2 -> 12.9
    assert row["gap_after_heal"] == 5.5  # 14.5 -> 20.0
    assert row["target"] == 2.0 and row["target_met"] is False


def test_the_command_exits_1_on_a_violation_and_prints_the_replay(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    """The whole path from a violating verdict to the exit status, with the
    run itself replaced by fabricated observations."""
    obs = dataclasses.replace(
        good(), learners=[state("learner-0", b"v1"), state("learner-1", b"v2", revision=2)]
    )

    def fake_run(config: RunConfig) -> Outcome:
        result = checkers.judge(obs)
        summary = report.summarize(
            report.RunInfo(
                seed=config.seed,
                duration=config.duration,
                elapsed=config.duration,
                replay=config.replay,
            ),
            history=obs.history,
            records=[],
            result=result,
            errors={},
            gaps=[],
            notes=[],
        )
        return Outcome(summary, result, report.format_table(summary))

    monkeypatch.setattr(cli, "run_chaos", fake_run)
    status = cli.main(["--duration", "20s", "--seed", "99", "--out", str(tmp_path)])
    out = capsys.readouterr().out
    assert status == cli.EXIT_VIOLATION
    assert "verdict: VIOLATION" in out
    assert "replay with: python -m paxos_testing.chaos --duration 20s --seed 99" in out


def test_the_command_exits_2_without_root(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    status = cli.main(["--duration", "5s", "--seed", "1", "--out", str(tmp_path)])
    assert status == cli.EXIT_CANNOT_RUN
    assert "must run as root" in capsys.readouterr().err


def test_the_replay_command_repeats_every_non_default_flag() -> None:
    args = cli.build_parser().parse_args(
        ["--duration", "90s", "--kinds", "kill,fsync", "--clients", "2", "--fault-seconds", "1-2"]
    )
    assert cli.replay_command(args, 5) == (
        "python -m paxos_testing.chaos --duration 90s --seed 5 --clients 2 "
        "--fault-seconds 1-2 --kinds kill,fsync"
    )
