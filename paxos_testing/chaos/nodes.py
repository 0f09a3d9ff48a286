"""The nodes of a chaos run: one server process each, in its own network
namespace, with every start of it recorded; and the addresses they have."""

from __future__ import annotations

import shlex
import subprocess
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

from paxos_testing.chaos.host import HarnessError

#: The run's private subnet. It exists only inside the namespaces a run creates.
SUBNET = "10.77.0"
HUB_IP = f"{SUBNET}.1"
#: Every node listens on this port on its own address.
PORT = 7000
#: Test only: the entry point that runs a deliberately broken acceptor
#: (paxos_testing/broken_acceptor.py, in the source tree, never in the wheel).
#: Started by module name: the product never imports paxos_testing.
BROKEN_ACCEPTOR_MODULE = "paxos_testing.broken_acceptor"
#: Its modes (checked again by the entry point itself).
BROKEN_ACCEPTOR_MODES = ("promise-lower",)


@dataclass
class Incarnation:
    """One start of a node: its process, log, and how it ended."""

    start: int
    pid: int
    log: Path
    #: None while running; a negative number is the signal that ended it.
    exit_code: int | None = None
    #: The nemesis ended it on purpose (SIGKILL).
    killed: bool = False


@dataclass
class Node:
    """One server process, in its own namespace, and every start of it."""

    role: str  # "acceptor" | "proposer" | "learner"
    node_id: int
    netns: str
    ip: str
    argv: list[str]
    log_dir: Path
    data_dir: Path | None = None  # an acceptor's tmpfs mount point
    under_fiu: bool = False
    #: A libfaketime timestamp file ("+<seconds>"): the node's clock offset.
    clock_file: Path | None = None
    #: Extra environment.
    env: dict[str, str] = field(default_factory=dict)
    #: Test only: the broken-acceptor mode this acceptor runs in, or None.
    broken_mode: str | None = None
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    paused: bool = False
    #: Every start of this node, in order.
    incarnations: list[Incarnation] = field(default_factory=list)

    @property
    def name(self) -> str:
        return f"{self.role}-{self.node_id}"

    @property
    def address(self) -> str:
        return f"{self.ip}:{PORT}"

    @property
    def pid(self) -> int | None:
        return self.process.pid if self.process is not None else None

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    @property
    def log_path(self) -> Path:
        return self.log_dir / f"{self.name}.{self.starts}.log"


def broken_acceptor_argv(python: str, mode: str, argv: Sequence[str]) -> list[str]:
    """``argv`` (``python -m paxos_service acceptor ARGS``) as the same acceptor
    started through the test-only broken-acceptor entry point."""
    prefix = [python, "-m", "paxos_service", "acceptor"]
    if list(argv[:4]) != prefix:
        raise HarnessError(f"not an acceptor command: {shlex.join(argv)}")
    if mode not in BROKEN_ACCEPTOR_MODES:
        raise HarnessError(f"{mode!r} is not a broken-acceptor mode: {BROKEN_ACCEPTOR_MODES}")
    return [python, "-m", BROKEN_ACCEPTOR_MODULE, "--mode", mode, *argv[4:]]
