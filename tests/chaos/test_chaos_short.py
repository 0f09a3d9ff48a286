"""A CI-sized chaos run: the real cluster in network namespaces under a seeded
nemesis for about 25 s, then every checker. Needs root (as CI runs).

Seed 74 plans, in 28 s: a split brain (the leader and one learner cut off
from the other proposers and learner, both halves still reaching every
acceptor, the leader paused until another proposer leads and then
continued), a failed fsync on one acceptor, and a pause of the leader
(schedule.plan_schedule; test_checkers pins the kinds). The run must pass,
write its report, and leave nothing behind: no namespace, mount, hosts file,
fiu FIFO or process of its own.

tests/chaos/test_broken_acceptor.py runs exactly this with deliberately
broken acceptors and must see it fail.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[2]
SEED = 74
DURATION = "28s"


def _run(args: list[str], user: list[str] | None = None) -> subprocess.Popen[str]:
    return subprocess.Popen(
        [*(user or []), sys.executable, "-m", "paxos_testing.chaos", *args],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def run_short(out: Path, *extra: str) -> tuple[int, int, str]:
    """Run this file's configuration (plus ``extra`` flags) as root; returns
    the controller's PID, its exit status and its output."""
    if os.geteuid() != 0:
        pytest.fail("the chaos run needs root (CI runs as root)", pytrace=False)
    proc = _run(["--duration", DURATION, "--seed", str(SEED), "--out", str(out), *extra])
    try:
        # Generous: a fresh machine first installs iptables, fiu-utils and faketime.
        output, _ = proc.communicate(timeout=400)
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()
    print(output)
    return proc.pid, proc.returncode, output


def assert_split_brain_happened(summary: dict[str, Any]) -> None:
    """The split brain really gave the cluster a second leader while the old
    one was paused (and then continued it)."""
    split = next(f for f in summary["fault_log"] if f["kind"] == "split-brain")
    assert split["hit_leader"], split
    assert any(" led, " in note and "then continued" in note for note in split["notes"]), split


def assert_nothing_left(pid: int, out: Path) -> None:
    """Nothing of the run whose controller had ``pid`` is left behind."""
    prefix = f"cx{pid}-"
    netns = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True).stdout
    assert prefix not in netns
    assert (
        not [p for p in Path("/etc/netns").glob(f"{prefix}*")]
        if Path("/etc/netns").exists()
        else True
    )
    assert str(out) not in Path("/proc/mounts").read_text()
    assert not (out / "fiu").exists()
    ps = subprocess.run(["ps", "-eo", "args"], capture_output=True, text=True).stdout
    assert str(out / "data") not in ps


@pytest.mark.timeout(420)
def test_short_chaos_run_passes_and_cleans_up(tmp_path: Path) -> None:
    out = tmp_path / "run"
    pid, returncode, output = run_short(out)
    assert returncode == 0, output[-4000:]
    summary = json.loads((out / "summary.json").read_text())
    assert summary["verdict"] == "pass"
    assert summary["seed"] == SEED
    assert summary["violations"] == []
    assert {c["name"] for c in summary["checks"]} >= {
        "linearizable",
        "agreement",
        "acceptors",
        "validity",
        "processes",
        "stop-voting",
    }
    assert summary["faults"]["total"] >= 3
    assert summary["faults"]["by_kind"].get("fsync") == 1
    # The failed fsync really stopped that acceptor from voting.
    fsync = next(f for f in summary["fault_log"] if f["kind"] == "fsync")
    assert fsync["saw_not_serving"], fsync
    # Two proposers believed they led, and correct acceptors kept it safe.
    assert_split_brain_happened(summary)
    assert summary["operations"]["ok"] > 100
    assert len(summary["availability"]) == summary["faults"]["total"]
    history = (out / "history.jsonl").read_text().splitlines()
    assert len(history) == summary["operations"]["total"]
    assert f"--seed {SEED}" in output and "verdict: PASS" in output
    assert "broken_acceptor" not in summary
    # The timeline (matplotlib comes with the dev install, as `make chaos` uses it).
    assert (out / "timeline.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert_nothing_left(pid, out)


def test_without_root_it_says_so_and_exits_2(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """As an ordinary user the harness stops at once with a clear message and
    exit 2. In-process, with geteuid reporting "nobody": a real ordinary user
    may not even be able to read a checkout made by mktemp (0700)."""
    from paxos_testing.chaos.cli import main

    monkeypatch.setattr(os, "geteuid", lambda: 65534)
    code = main(["--duration", "1s", "--out", str(tmp_path / "x")])
    output = capsys.readouterr()
    assert code == 2, output
    assert "must run as root" in output.out + output.err
    assert not (tmp_path / "x" / "data").exists(), "it must stop before starting anything"
