"""``paxos kv`` as a user types it, against ``paxos cluster``: put, get, cas,
del, range, watch, and what the errors look like."""

from __future__ import annotations

import re
import shlex
import signal
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.test_kv_client import ClusterProcess, paxos_cluster
from tests.support.processes import clean_env, free_port

PAXOS = [sys.executable, "-m", "paxos_service"]
TIMEOUT = 60


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ClusterProcess]:
    with paxos_cluster(tmp_path_factory.mktemp("kv-cli")) as running:
        yield running


def _env(cluster: ClusterProcess | None) -> dict[str, str]:
    env = clean_env()
    if cluster is not None:
        env["PAXOS_LEARNERS"] = ",".join(cluster.learners)
    return env


def kv(
    cluster: ClusterProcess | None, *args: str | bytes, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    """``paxos kv ARGS`` with PAXOS_LEARNERS pointing at the cluster."""
    return subprocess.run(
        [*PAXOS, "kv", *args],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=env if env is not None else _env(cluster),
        check=False,
    )


def ok(result: subprocess.CompletedProcess[str]) -> str:
    assert result.returncode == 0, f"exit {result.returncode}: {result.stderr}"
    return result.stdout


def failed(result: subprocess.CompletedProcess[str], code: int = 1) -> str:
    """The one error line of a failed command (never a traceback)."""
    assert result.returncode == code, f"exit {result.returncode}: {result.stdout}{result.stderr}"
    assert "Traceback" not in result.stderr
    if code == 1:
        lines = result.stderr.splitlines()
        assert len(lines) == 1 and lines[0].startswith("paxos: error: "), result.stderr
    return result.stderr


def _revision(output: str) -> int:
    match = re.fullmatch(r"revision (\d+)\n", output)
    assert match, output
    return int(match[1])


def test_the_banner_kv_commands_work_when_pasted(cluster: ClusterProcess) -> None:
    lines = [line.strip() for line in cluster.banner if line.strip().startswith("paxos kv")]
    assert len(lines) == 2
    put, get = (shlex.split(line)[1:] for line in lines)
    assert _revision(ok(kv(None, *put[1:], env=clean_env()))) >= 1
    assert ok(kv(None, *get[1:], env=clean_env())) == "hello\n"


def test_put_get_cas_del_range(cluster: ClusterProcess) -> None:
    first = _revision(ok(kv(cluster, "put", "app/mode", "fast")))
    assert ok(kv(cluster, "get", "app/mode")) == "fast\n"
    # --learners on the command line wins over the environment.
    flagged = kv(None, "--learners", cluster.learners[0], "get", "app/mode", env=clean_env())
    assert ok(flagged) == "fast\n"

    swapped = ok(kv(cluster, "cas", "app/mode", "slow", "--expect-value", "fast"))
    assert swapped == f"swapped (revision {first + 1})\n"
    lost = kv(cluster, "cas", "app/mode", "medium", "--expect-value", "fast")
    assert "not swapped: current value slow version 2" in failed(lost)
    assert ok(kv(cluster, "get", "app/mode")) == "slow\n"

    assert ok(kv(cluster, "cas", "app/lock", "me", "--expect-version", "0")).startswith("swapped")
    taken = kv(cluster, "cas", "app/lock", "you", "--expect-version", "0")
    assert "not swapped: current value me version 1" in failed(taken)
    absent = kv(cluster, "cas", "app/none", "x", "--expect-value", "y")
    assert "not swapped: key app/none is absent" in failed(absent)

    ok(kv(cluster, "put", "app/multi", "line one\nline two"))
    assert ok(kv(cluster, "get", "app/multi")) == "line one\nline two\n"
    assert ok(kv(cluster, "range", "app/")) == (
        "app/lock me\napp/mode slow\napp/multi base64:bGluZSBvbmUKbGluZSB0d28=\n"
    )
    assert ok(kv(cluster, "range", "app/", "--limit", "1")) == "app/lock me\n"
    assert ok(kv(cluster, "range", "nothing/")) == ""

    deleted = ok(kv(cluster, "del", "app/lock"))
    assert re.fullmatch(r"deleted \(revision \d+\)\n", deleted)
    assert ok(kv(cluster, "del", "app/lock")) == "not found (nothing deleted)\n"
    assert failed(kv(cluster, "get", "app/lock")) == "paxos: error: key not found: app/lock\n"

    stale = kv(cluster, "get", "--stale", "app/mode")
    assert ok(stale) == "slow\n"
    assert "stale read" in stale.stderr and "instance" in stale.stderr


def test_bytes_that_are_not_utf8_round_trip_as_base64(cluster: ClusterProcess) -> None:
    ok(kv(cluster, "put", "bin/blob", b"\xff\xfe"))
    assert ok(kv(cluster, "get", "bin/blob")) == "base64://4=\n"
    assert ok(kv(cluster, "range", "bin/")) == "bin/blob base64://4=\n"


def test_watch_prints_events_while_puts_happen_and_exits_after_count(
    cluster: ClusterProcess,
) -> None:
    start = _revision(ok(kv(cluster, "put", "w/seed", "0"))) + 1
    # --from-revision makes the test independent of when the watch connects:
    # it replays from there, then follows live changes.
    watcher = subprocess.Popen(
        [*PAXOS, "kv", "watch", "w/", "--prefix", "--from-revision", str(start), "--count", "3"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cluster),
    )
    try:
        a = _revision(ok(kv(cluster, "put", "w/a", "1")))
        ok(kv(cluster, "put", "elsewhere", "not watched"))
        b = _revision(ok(kv(cluster, "put", "w/b", "2")))
        d = int(re.findall(r"\d+", ok(kv(cluster, "del", "w/a")))[0])
        out, err = watcher.communicate(timeout=TIMEOUT)
    finally:
        watcher.kill()
    assert watcher.returncode == 0, err
    assert out == f"PUT w/a 1 (revision {a})\nPUT w/b 2 (revision {b})\nDELETE w/a (revision {d})\n"


def test_ctrl_c_stops_a_watch_quietly_with_130(cluster: ClusterProcess) -> None:
    revision = _revision(ok(kv(cluster, "put", "ctrl/c", "x")))
    watcher = subprocess.Popen(
        [*PAXOS, "kv", "watch", "ctrl/c", "--from-revision", str(revision)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=_env(cluster),
    )
    try:
        assert watcher.stdout is not None
        # The first line proves the watch is running (and the handlers are set).
        assert watcher.stdout.readline() == f"PUT ctrl/c x (revision {revision})\n"
        watcher.send_signal(signal.SIGINT)
        out, err = watcher.communicate(timeout=TIMEOUT)
        assert out == "", "nothing more after the interrupt"
    finally:
        watcher.kill()
    assert watcher.returncode == 130
    assert err == ""


def test_errors_are_one_line_and_usage_errors_exit_2(cluster: ClusterProcess) -> None:
    # Without --learners or PAXOS_LEARNERS, the local cluster's learner is the default.
    usage = kv(None, "--help", env=clean_env())
    assert "127.0.0.1:50056" in usage.stdout
    dead = f"127.0.0.1:{free_port()}"
    unreachable = kv(None, "--learners", dead, "--timeout", "0.5", "put", "k", "v")
    assert "no learner could serve the request within 0.5s" in failed(unreachable)
    assert "key must not be empty" in failed(kv(cluster, "put", "", "v"))
    assert "longer than" in failed(kv(cluster, "get", "k" * 5000))
    assert "--expect-value" in failed(kv(cluster, "cas", "k", "v"), code=2)
    both = kv(cluster, "cas", "k", "v", "--expect-value", "a", "--expect-version", "1")
    assert "not allowed with" in failed(both, code=2)
    assert "--limit" in failed(kv(cluster, "range", "p", "--limit", "-1"), code=2)
    assert "--count" in failed(kv(cluster, "watch", "k", "--count", "zero"), code=2)
    bad_address = kv(None, "--learners", "nohost", "get", "k", env=clean_env())
    assert "HOST:PORT" in failed(bad_address, code=2)
    assert "invalid choice" in failed(kv(cluster, "frobnicate"), code=2)


def test_outcome_command_reports_applied_requests(cluster: ClusterProcess) -> None:
    # A fresh client id is never applied; the answer comes back through the log.
    result = kv(cluster, "outcome", "12345", "1")
    assert result.returncode == 1 and result.stdout == "not applied\n"


def test_help_lists_the_kv_operations(tmp_path: Path) -> None:
    result = subprocess.run(
        [*PAXOS, "kv", "--help"],
        capture_output=True,
        text=True,
        timeout=TIMEOUT,
        env=clean_env(),
        check=False,
        cwd=tmp_path,
    )
    assert result.returncode == 0
    for operation in ("put", "get", "del", "cas", "range", "watch"):
        assert operation in result.stdout
