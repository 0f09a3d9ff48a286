"""The ``paxos cluster`` process and the nemesis of the black-box safety test.

The cluster's nodes as its banner lists them, helpers that read a node's
command line and environment from ``/proc``, and a nemesis that SIGKILLs
proposers and starts them again exactly as they were started.
"""

from __future__ import annotations

import os
import random
import signal
import subprocess
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

from grpc_health.v1 import health_pb2

from tests.support.processes import health_status, wait_until

# The cluster ----------------------------------------------------------------


@dataclass
class Proposer:
    node_id: int
    address: str
    pid: int
    #: Set once the nemesis restarted it (then it is our child).
    process: subprocess.Popen[bytes] | None = None


@dataclass
class BlackboxCluster:
    process: subprocess.Popen[str]
    banner: list[str]
    rows: list[tuple[str, int, str, int]]  # role, id, address, pid
    workdir: Path
    proposers: list[Proposer] = field(default_factory=list)
    output: list[str] = field(default_factory=list)

    def addresses(self, role: str) -> list[str]:
        return [address for r, _, address, _ in self.rows if r == role]

    def pids(self, role: str) -> list[int]:
        return [pid for r, _, _, pid in self.rows if r == role]


def pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    # A zombie (exited, not yet reaped by its parent) counts as gone.
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def proc_argv(pid: int) -> list[str]:
    raw = Path(f"/proc/{pid}/cmdline").read_bytes()
    return [part.decode() for part in raw.split(b"\0")[:-1]]


def proc_env(pid: int) -> dict[str, str]:
    raw = Path(f"/proc/{pid}/environ").read_bytes()
    pairs = (part.decode().partition("=") for part in raw.split(b"\0") if part)
    return {name: value for name, _, value in pairs}


def is_paxos_node(pid: int) -> bool:
    """Still one of our nodes (not a recycled pid)?"""
    try:
        return "paxos_service" in proc_argv(pid)
    except OSError:
        return False


# The nemesis ------------------------------------------------------------------


class Nemesis:
    """SIGKILLs proposers and starts them again exactly as they were started."""

    def __init__(self, cluster: BlackboxCluster, rng: random.Random) -> None:
        self.cluster = cluster
        self.rng = rng
        self.kills = 0
        self.double_kills = 0
        self.error: BaseException | None = None
        self.restarts = 0

    def run(self, stop: threading.Event) -> None:
        try:
            while not stop.wait(self.rng.uniform(2.0, 3.0)):
                proposers = self.cluster.proposers
                if self.rng.random() < 0.25:
                    victims = self.rng.sample(proposers, len(proposers))
                    self.double_kills += 1
                else:
                    victims = [self.rng.choice(proposers)]
                saved = [self.kill(p) for p in victims]
                time.sleep(self.rng.uniform(0.2, 1.0))  # pacing, not synchronisation
                for proposer, (argv, env, cwd) in zip(victims, saved, strict=True):
                    self.restart(proposer, argv, env, cwd)
        except BaseException as exc:  # reported by the test
            self.error = exc

    def kill(self, proposer: Proposer) -> tuple[list[str], dict[str, str], str]:
        pid = proposer.pid
        argv, env, cwd = proc_argv(pid), proc_env(pid), os.readlink(f"/proc/{pid}/cwd")
        assert "proposer" in argv, argv
        os.kill(pid, signal.SIGKILL)
        if proposer.process is not None:
            proposer.process.wait(timeout=10)
        else:  # the supervisor's child: it reaps it
            wait_until(lambda: not pid_alive(pid), 10, f"proposer pid {pid} to die")
        self.kills += 1
        return argv, env, cwd

    def restart(self, proposer: Proposer, argv: list[str], env: dict[str, str], cwd: str) -> None:
        self.restarts += 1
        log = self.cluster.workdir / f"proposer-{proposer.node_id}-restart-{self.restarts}.log"
        with log.open("ab") as out:
            process = subprocess.Popen(
                argv,
                stdout=out,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                env=env,
                cwd=cwd,
                start_new_session=True,
            )
        proposer.process, proposer.pid = process, process.pid
        wait_serving(proposer, log)


def wait_serving(proposer: Proposer, log: Path | None = None) -> None:
    def serving() -> bool:
        if proposer.process is not None and proposer.process.poll() is not None:
            text = log.read_text(errors="replace") if log is not None else ""
            raise AssertionError(f"proposer {proposer.node_id} exited:\n{text[-3000:]}")
        return bool(health_status(proposer.address) == health_pb2.HealthCheckResponse.SERVING)

    wait_until(serving, 20, f"proposer {proposer.node_id} at {proposer.address} to serve")
