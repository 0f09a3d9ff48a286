"""A deliberately broken acceptor makes the chaos run fail: the checkers can
catch a real unsafe cluster, not only fabricated observations
(test_checkers.py does those).

The broken acceptor (paxos_testing/broken_acceptor.py) ignores its promises:
it promises and accepts ballots below the one it promised. It is test tooling,
not in the product: ``--broken-acceptor promise-lower`` makes the harness
start those acceptors as ``python -m paxos_testing.broken_acceptor --mode
promise-lower ARGS`` instead of ``python -m paxos_service acceptor ARGS``.

The real run is the CI-sized run of test_chaos_short.py (which passes with
correct acceptors), plus the flag, for 60 s instead of 28 s. Its first fault is a split brain: the
leader and one learner are cut off from the other proposers and learner, both
halves still reach every acceptor, and the leader is paused until another
proposer leads, then continued. Correct acceptors reject the old leader's next
Accept; the broken ones let both leaders get values chosen for the same
instances, each learner applies its own leader's, and acknowledged writes go
missing on the other side. The run must exit 1 and its report must name the
violated checks (agreement, linearizable).
"""

from __future__ import annotations

import json
import re
from pathlib import Path

import pytest

from paxos_testing import broken_acceptor
from paxos_testing.chaos import cli
from paxos_testing.chaos.harness import Harness
from paxos_testing.chaos.nodes import BROKEN_ACCEPTOR_MODES
from roles import (
    Accept,
    Accepted,
    Acceptor,
    AcceptorState,
    Ballot,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    RangePromise,
    Reject,
)
from tests.chaos.test_chaos_short import (
    SEED,
    assert_nothing_left,
    assert_split_brain_happened,
    run_short,
)

#: Longer than the passing run's: since learners repair instances that no
#: majority shows under one ballot (a no-op Propose, replica.py), a learner
#: cut off with the old leader no longer stays stuck, and the 28 s run often
#: ends before the broken acceptors' divergence shows; 60 s of the same
#: schedule (same seed, more faults) shows it.
BROKEN_DURATION = "60s"
# A 60 s run shows the divergence in about one try in five here (3 catches
# in 16 tries, measured one run at a time), so up to five tries; that still
# fails about one run in three. Earlier code caught it in most tries: the
# power of this schedule fell, and the cure (a workload that makes two
# leaders overlap more, or a checker of the acceptors' votes) is still to do.
BROKEN_ATTEMPTS = 5

LOW, HIGH = Ballot(1, 0), Ballot(2, 1)
#: Promised HIGH, accepted nothing.
PROMISED = AcceptorState(promised_ballot=HIGH)


# -- the broken acceptor itself (no root needed) ---------------------------------


def test_the_entry_point_takes_the_acceptor_arguments() -> None:
    assert broken_acceptor.acceptor_argv(["--mode", "promise-lower", "--id", "0"]) == (
        "promise-lower",
        ["acceptor", "--id", "0"],
    )
    assert broken_acceptor.acceptor_argv(["--mode", "promise-lower", "acceptor", "--id", "1"])[
        1
    ] == ["acceptor", "--id", "1"]
    with pytest.raises(SystemExit):
        broken_acceptor.acceptor_argv(["--mode", "promise-lowr", "--id", "0"])
    with pytest.raises(SystemExit):
        broken_acceptor.acceptor_argv(["--id", "0"])  # no mode: no silent correct run
    with pytest.raises(SystemExit):
        broken_acceptor.acceptor_argv(["--mode", "promise-lower", "acceptor", "recover"])
    # The harness (inside paxos_service, which may not import paxos_testing) knows the modes.
    assert BROKEN_ACCEPTOR_MODES == broken_acceptor.MODES


def test_install_breaks_every_acceptor_and_can_be_undone() -> None:
    made: list[int] = []
    uninstall = broken_acceptor.install(
        "promise-lower", on_create=lambda a: made.append(a.acceptor_id)
    )
    try:
        acceptor = Acceptor(3)
        assert made == [3]
        step = acceptor.on_accept(PROMISED, Accept(5, LOW, b"x"))
        assert step.reply == Accepted(5, LOW, 3, b"x")
    finally:
        uninstall()
    assert isinstance(Acceptor(3).on_accept(PROMISED, Accept(5, LOW, b"x")).reply, Reject)
    assert made == [3]


def test_promise_lower_accepts_and_promises_below_its_promise() -> None:
    correct = Acceptor(0)
    broken = broken_acceptor.PromiseIgnoringAcceptor(0)

    # A correct acceptor holds a leader with a lower ballot to its promise...
    assert isinstance(correct.on_accept(PROMISED, Accept(5, LOW, b"x")).reply, Reject)
    assert isinstance(correct.on_prepare(PROMISED, Prepare(5, LOW)).reply, Reject)
    assert isinstance(
        correct.on_accept(AcceptorState(), Accept(5, LOW, b"x"), floor=HIGH).reply, Reject
    )
    # ... the broken one does not: it accepts (and persists) and promises.
    step = broken.on_accept(PROMISED, Accept(5, LOW, b"x"))
    assert step.reply == Accepted(5, LOW, 0, b"x")
    assert step.persist and step.state == AcceptorState(HIGH, LOW, b"x")
    assert broken.on_accept(AcceptorState(), Accept(5, LOW, b"x"), floor=HIGH).reply == Accepted(
        5, LOW, 0, b"x"
    )
    step = broken.on_prepare(AcceptorState(HIGH, HIGH, b"y"), Prepare(5, LOW))
    assert step.reply == Promise(5, LOW, 0, HIGH, b"y")
    assert not step.persist  # its own promise stays HIGH
    # Multi-Paxos: a PrepareRange below the range promise is promised too.
    range_promise = RangePromise(1, HIGH)
    ranged = broken.on_prepare_range(
        range_promise, {7: AcceptorState(HIGH, HIGH, b"y")}, PrepareRange(3, LOW)
    )
    assert ranged.reply == PromiseRange(3, LOW, 0, (Accepted(7, HIGH, 0, b"y"),))
    assert ranged.range_promise == range_promise
    # What a correct acceptor would do anyway is unchanged.
    fresh = AcceptorState()
    assert broken.on_accept(fresh, Accept(5, HIGH, b"x")) == correct.on_accept(
        fresh, Accept(5, HIGH, b"x")
    )
    assert broken.on_prepare(fresh, Prepare(5, HIGH)) == correct.on_prepare(fresh, Prepare(5, HIGH))


def test_the_harness_starts_the_chosen_acceptors_through_the_test_entry_point(
    tmp_path: Path,
) -> None:
    harness = Harness(tmp_path, "cxtest", broken_acceptor="promise-lower", broken_acceptors=2)
    harness.plan()
    correct = Harness(tmp_path, "cxtest")
    correct.plan()
    broken = {n.name for n in harness.nodes.values() if n.broken_mode == "promise-lower"}
    assert broken == {"acceptor-0", "acceptor-1"}
    for name, node in harness.nodes.items():
        same = correct.nodes[name].argv
        if name in broken:
            # The same acceptor arguments, through the test-only module.
            assert node.argv[1:5] == [
                "-m",
                "paxos_testing.broken_acceptor",
                "--mode",
                "promise-lower",
            ]
            assert node.argv[5:] == same[4:]
        else:
            assert node.argv == same
        assert not node.env  # no environment switch any more
    assert not any(n.broken_mode for n in correct.nodes.values())


def test_the_flags_are_replayed_and_checked(capsys: pytest.CaptureFixture[str]) -> None:
    args = cli.build_parser().parse_args(
        ["--duration", "28s", "--broken-acceptor", "promise-lower", "--broken-acceptors", "2"]
    )
    assert cli.replay_command(args, 3) == (
        "python -m paxos_testing.chaos --duration 28s --seed 3 "
        "--broken-acceptor promise-lower --broken-acceptors 2"
    )
    with pytest.raises(SystemExit):
        cli.main(["--duration", "5s", "--broken-acceptors", "2"])
    assert "needs --broken-acceptor" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        cli.main(["--duration", "5s", "--broken-acceptor", "forget-everything"])


# -- the real run (root, network namespaces) --------------------------------------


@pytest.mark.timeout(600)
def test_a_run_with_broken_acceptors_fails_and_names_the_check(tmp_path: Path) -> None:
    # Whether a run of this length shows the divergence depends on real
    # timing: the same schedule finds it in some runs only (see
    # BROKEN_ATTEMPTS). Up to five runs, stopping at the first that does.
    seed = SEED
    for attempt in range(BROKEN_ATTEMPTS):
        out = tmp_path / f"run-{attempt}"
        pid, returncode, output = run_short(
            out,
            "--broken-acceptor",
            "promise-lower",
            "--duration",
            BROKEN_DURATION,
            "--seed",
            str(seed),
        )
        if returncode == cli.EXIT_VIOLATION:
            break
        assert_nothing_left(pid, out)
    assert returncode == cli.EXIT_VIOLATION, output[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "violation"
    assert summary["seed"] == seed
    assert summary["broken_acceptor"] == {
        "mode": "promise-lower",
        "acceptors": ["acceptor-0", "acceptor-1", "acceptor-2"],
    }
    # The same fault as in the passing run: two proposers that believe they lead.
    assert_split_brain_happened(summary)
    # What breaks is what a client can see: the learners diverge (agreement)
    # and writes acknowledged on one side are missing on the other
    # (linearizable). Storage and processes are fine: the acceptors persist
    # every vote, they just break their promises.
    status = {c["name"]: c["status"] for c in summary["checks"]}
    failed = {name for name, s in status.items() if s != "ok"}
    assert failed & {"agreement", "linearizable"}, status
    assert failed <= {"agreement", "linearizable", "acceptors"}, status
    assert summary["violations"], summary
    assert all(v.split(":")[0] in failed for v in summary["violations"])
    # Printed, too: the verdict, the failed check, the warning, the replay.
    assert "verdict: VIOLATION" in output
    assert any(re.search(rf"^ +{name} +VIOLATION", output, re.MULTILINE) for name in failed)
    assert "TEST ONLY: acceptor-0, acceptor-1, acceptor-2 ran deliberately broken" in output
    replay = f"--duration {BROKEN_DURATION} --seed {seed} --broken-acceptor promise-lower"
    assert replay in output
    # Every acceptor said loudly that it is broken, and was started through
    # the test-only entry point.
    for i in range(3):
        log = (out / "logs" / f"acceptor-{i}.1.log").read_text()
        assert "TEST-ONLY BROKEN ACCEPTOR" in log
        assert '"level": "warning"' in log
        assert "-m paxos_testing.broken_acceptor --mode promise-lower" in log
    assert_nothing_left(pid, out)
