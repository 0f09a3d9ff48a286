"""``paxos cluster`` and the real grpcurl binary, used the way the README shows."""

from __future__ import annotations

import base64
import contextlib
import json
import os
import re
import shlex
import signal
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.support.processes import clean_env, free_port_range, wait_until

GRPCURL = Path(sys.executable).parent / "grpcurl"
SERVICES = {
    "acceptor": "paxos_service.v1.AcceptorService",
    "proposer": "paxos_service.v1.ProposerService",
    "learner": "paxos_service.v1.LearnerService",
}


@dataclass
class RunningCluster:
    process: subprocess.Popen[str]
    banner: list[str]
    rows: list[tuple[str, int, str, int]]  # role, id, address, pid
    workdir: Path


@pytest.fixture
def running_cluster(tmp_path: Path) -> Iterator[RunningCluster]:
    yield from _run_cluster(tmp_path)


@pytest.fixture
def running_tls_cluster(tmp_path: Path) -> Iterator[RunningCluster]:
    yield from _run_cluster(tmp_path, "--tls")


def _run_cluster(tmp_path: Path, *options: str) -> Iterator[RunningCluster]:
    base = free_port_range(6)
    env = clean_env() | {"PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}"}
    process = subprocess.Popen(
        [
            sys.executable,
            "-m",
            "paxos_service",
            "cluster",
            "--base-port",
            str(base),
            "--data-dir",
            str(tmp_path / "data"),
            *options,
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
        raise AssertionError("cluster exited early:\n" + "\n".join(banner))
    rows = []
    for line in banner:
        match = re.match(r"^(acceptor|proposer|learner)\s+(\d+)\s+(\S+)\s+(\d+)", line)
        if match:
            rows.append((match[1], int(match[2]), match[3], int(match[4])))
    try:
        yield RunningCluster(process, banner, rows, tmp_path)
    finally:
        if process.poll() is None:
            process.kill()
            for _, _, _, pid in rows:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(pid, signal.SIGKILL)
        process.wait(timeout=10)


def _run(command: list[str] | str) -> subprocess.CompletedProcess[str]:
    argv = shlex.split(command) if isinstance(command, str) else command
    return subprocess.run(argv, capture_output=True, text=True, timeout=60, check=False)


def test_cluster_prints_its_nodes_and_working_commands(running_cluster: RunningCluster) -> None:
    rows = running_cluster.rows
    assert [r[0] for r in rows] == ["acceptor"] * 3 + ["proposer"] * 2 + ["learner"]
    # The banner's grpcurl commands work when pasted (with our grpcurl binary).
    commands = [line.strip() for line in running_cluster.banner if "grpcurl" in line]
    assert len(commands) == 3
    propose_cmd, read_cmd, kv_put_cmd = (c.replace(c.split()[0], str(GRPCURL), 1) for c in commands)
    proposed = _run(propose_cmd)
    assert proposed.returncode == 0, proposed.stderr
    reply = json.loads(proposed.stdout)
    assert base64.b64decode(reply["value"]) == b"hello"
    assert reply["own_value_chosen"] is True
    read = _run(read_cmd)
    assert read.returncode == 0, read.stderr
    assert json.loads(read.stdout)["decided"] is True
    put = _run(kv_put_cmd)
    assert put.returncode == 0, put.stderr
    assert int(json.loads(put.stdout)["revision"]) >= 1
    # And so do the CLI lines.
    cli = [
        line.strip()
        for line in running_cluster.banner
        if line.strip().startswith(("paxos propose", "paxos get"))
    ]
    assert len(cli) == 2
    paxos = [sys.executable, "-m", "paxos_service"]
    proposed_cli = _run(paxos + shlex.split(cli[0])[1:])
    assert proposed_cli.returncode == 0, proposed_cli.stderr
    assert proposed_cli.stdout.strip() == "hello"
    got = _run(paxos + shlex.split(cli[1])[1:])
    assert got.stdout.strip() == "hello"


def test_grpcurl_lists_every_service_by_reflection(running_cluster: RunningCluster) -> None:
    for role, _, address, _ in running_cluster.rows:
        listed = _run([str(GRPCURL), "-plaintext", address, "list"])
        assert listed.returncode == 0, listed.stderr
        services = set(listed.stdout.split())
        assert {SERVICES[role], "grpc.health.v1.Health"} <= services
        described = _run([str(GRPCURL), "-plaintext", address, "describe", SERVICES[role]])
        assert described.returncode == 0
        assert "rpc " in described.stdout


def test_grpcurl_bad_input_gets_invalid_argument(running_cluster: RunningCluster) -> None:
    proposer = next(r[2] for r in running_cluster.rows if r[0] == "proposer")
    result = _run(
        [
            str(GRPCURL),
            "-plaintext",
            "-d",
            '{"instance": "0", "value": "eA=="}',
            proposer,
            "paxos_service.v1.ProposerService/Propose",
        ]
    )
    assert result.returncode != 0
    assert "InvalidArgument" in result.stderr
    assert "instance must be >= 1" in result.stderr


def test_cluster_survives_a_killed_acceptor_and_stops_everything_on_sigterm(
    running_cluster: RunningCluster,
) -> None:
    acceptor_pid = next(r[3] for r in running_cluster.rows if r[0] == "acceptor")
    os.kill(acceptor_pid, signal.SIGKILL)
    proposer = next(r[2] for r in running_cluster.rows if r[0] == "proposer")
    paxos = [sys.executable, "-m", "paxos_service"]
    result = _run([*paxos, "propose", "--proposer", proposer, "9", "still-works"])
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "still-works"
    running_cluster.process.send_signal(signal.SIGTERM)
    assert running_cluster.process.wait(timeout=30) == 0
    rest = running_cluster.process.stdout.read() if running_cluster.process.stdout else ""
    assert "exited with code -9" in rest, "the supervisor reports the killed acceptor"
    for _, _, _, pid in running_cluster.rows:
        wait_until(lambda pid=pid: not _pid_alive(pid), 10, f"pid {pid} to exit")


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().split()[2] != "Z"
    except FileNotFoundError:
        return False


def test_tls_cluster_prints_commands_that_work_with_its_certificates(
    running_tls_cluster: RunningCluster,
) -> None:
    """`paxos cluster --tls`: certificates under DATA_DIR/tls, every node
    behind mutual TLS, and a banner whose grpcurl and CLI lines carry them."""
    cluster = running_tls_cluster
    tls_dir = cluster.workdir / "data" / "tls"
    for bundle in ("ca", "peer", "client"):
        assert {p.name for p in (tls_dir / bundle).iterdir()} == {"ca.crt", "tls.crt", "tls.key"}
    commands = [line.strip() for line in cluster.banner if "grpcurl" in line]
    assert len(commands) == 3
    for command in commands:
        assert "-plaintext" not in command
        assert f"-cert {tls_dir / 'client' / 'tls.crt'}" in command, command
    propose_cmd, read_cmd, kv_put_cmd = (c.replace(c.split()[0], str(GRPCURL), 1) for c in commands)
    proposed = _run(propose_cmd)
    assert proposed.returncode == 0, proposed.stderr
    assert base64.b64decode(json.loads(proposed.stdout)["value"]) == b"hello"
    read = _run(read_cmd)
    assert read.returncode == 0 and json.loads(read.stdout)["decided"] is True, read.stderr
    put = _run(kv_put_cmd)
    assert put.returncode == 0, put.stderr

    paxos = [sys.executable, "-m", "paxos_service"]
    cli = [
        line.strip()
        for line in cluster.banner
        if line.strip().startswith(("paxos propose", "paxos get", "paxos kv"))
    ]
    assert len(cli) == 4 and all("--tls-cert" in line for line in cli), cli
    got = _run(paxos + shlex.split(cli[1])[1:])
    assert (got.returncode, got.stdout.strip()) == (0, "hello"), got.stderr
    kv_get = _run(paxos + shlex.split(cli[3])[1:])
    assert (kv_get.returncode, kv_get.stdout.strip()) == (0, "hello"), kv_get.stderr

    # Plaintext gets nowhere, and the CLI says why in one line.
    acceptor = next(r[2] for r in cluster.rows if r[0] == "acceptor")
    listed = _run([str(GRPCURL), "-plaintext", acceptor, "list"])
    assert listed.returncode != 0
    learner = next(r[2] for r in cluster.rows if r[0] == "learner")
    plain = _run([*paxos, "get", "--learner", learner, "1"])
    assert plain.returncode == 1 and "requires TLS" in plain.stderr, plain.stderr
    assert "Traceback" not in plain.stderr

    # Each node serves metrics on the address in the METRICS column.
    header = next(line for line in cluster.banner if line.startswith("ROLE"))
    assert "METRICS" in header.split()
    row = next(line for line in cluster.banner if line.startswith("acceptor"))
    metrics = row.split()[4]
    with urllib.request.urlopen(f"http://{metrics}/metrics", timeout=10) as response:
        assert response.status == 200


def _running(pid: int) -> bool:
    """Alive and not a zombie (an orphan's parent may never reap it here)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (FileNotFoundError, IndexError):
        return False
    return state != "Z"


def test_a_killed_cluster_takes_its_nodes_with_it(running_cluster: RunningCluster) -> None:
    """``paxos cluster`` SIGKILLed (no chance to stop its children): every node
    ends by itself, freeing its port. On the old code all six kept running,
    holding their ports, until killed by hand (this wait timed out)."""
    pids = [pid for _, _, _, pid in running_cluster.rows]
    assert all(_running(pid) for pid in pids)
    running_cluster.process.kill()
    running_cluster.process.wait(timeout=10)
    wait_until(lambda: not any(_running(pid) for pid in pids), timeout=20, what="every node ended")
