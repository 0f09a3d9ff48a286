"""What the chaos harness needs of the machine it runs on: root, a few Debian
tools, the network namespace calls Python lacks, and the cleanup of runs whose
controller died before it could clean up after itself."""

from __future__ import annotations

import contextlib
import ctypes
import glob
import json
import os
import shlex
import shutil
import signal
import subprocess
from collections.abc import Sequence
from pathlib import Path

#: Debian packages the harness needs, by the command that shows each is there.
REQUIRED_COMMANDS = {"ip": "iproute2", "tc": "iproute2", "iptables": "iptables"}
REQUIRED_COMMANDS |= {"iptables-restore": "iptables", "fiu-run": "fiu-utils"}
REQUIRED_COMMANDS |= {"fiu-ctrl": "fiu-utils", "mount": "mount", "faketime": "faketime"}

#: Where each run records what it made, until it has cleaned it up.
MANIFEST_DIR = Path("/run/paxos-chaos")

_CLONE_NEWNET = 0x40000000


class HarnessError(RuntimeError):
    """The harness itself could not do something (not a finding about the cluster)."""


class NotRootError(HarnessError):
    """The harness needs root: it creates namespaces, mounts and iptables rules."""


def run(argv: Sequence[str], timeout: float = 30, check: bool = True) -> str:
    """Run a command and return its stdout; raise HarnessError if it fails."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if check and proc.returncode != 0:
        raise HarnessError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def require_root() -> None:
    if os.geteuid() != 0:
        raise NotRootError(
            "the chaos harness must run as root: it creates network namespaces, veth pairs, "
            "a bridge, iptables rules and tmpfs mounts (CI runs as root; try `sudo make chaos`)"
        )


def ensure_tools(log: list[str]) -> None:
    """Install the Debian packages the harness needs if any is missing.

    Runs ``apt-get install -y`` once, and ``apt-get update`` first only if
    that install fails (a fresh machine has no package lists)."""
    missing = sorted({pkg for cmd, pkg in REQUIRED_COMMANDS.items() if shutil.which(cmd) is None})
    if not missing:
        return
    if shutil.which("apt-get") is None:
        raise HarnessError(f"missing packages {missing} and no apt-get to install them")
    log.append(f"installing {' '.join(missing)} with apt-get")
    install = ["apt-get", "install", "-y", "-q", *missing]
    env = os.environ | {"DEBIAN_FRONTEND": "noninteractive"}
    if subprocess.run(install, capture_output=True, env=env, check=False).returncode != 0:
        subprocess.run(["apt-get", "update", "-q"], capture_output=True, env=env, check=False)
        proc = subprocess.run(install, capture_output=True, text=True, env=env, check=False)
        if proc.returncode != 0:
            raise HarnessError(f"apt-get install {' '.join(missing)} failed: {proc.stderr[-500:]}")
    still = [cmd for cmd in REQUIRED_COMMANDS if shutil.which(cmd) is None]
    if still:
        raise HarnessError(f"still missing after apt-get: {still}")


def sweep_dead_runs() -> list[str]:
    """Undo what runs whose controller died without cleaning up (SIGKILL,
    power loss) left behind, from their manifests: processes in their
    namespaces, mounts, namespaces, hosts files. Returns what was removed."""
    removed: list[str] = []
    for path in sorted(MANIFEST_DIR.glob("cx*.json")):
        try:
            record = json.loads(path.read_text())
            pid = int(record["pid"])
        except (OSError, ValueError, KeyError, TypeError):
            continue
        if Path(f"/proc/{pid}").exists():
            continue  # still running (or the PID was reused: leave it alone)
        for netns in record.get("netns", []):
            pids = run(["ip", "netns", "pids", netns], check=False).split()
            for p in pids:
                with contextlib.suppress(ProcessLookupError, ValueError):
                    os.kill(int(p), signal.SIGKILL)
        for mount in record.get("mounts", []):
            if subprocess.run(["umount", mount], capture_output=True, check=False).returncode == 0:
                removed.append(mount)
        for netns in record.get("netns", []):
            gone = subprocess.run(
                ["ip", "netns", "delete", netns], capture_output=True, check=False
            )
            if gone.returncode == 0:
                removed.append(netns)
        for etc in record.get("etc", []):
            if etc.startswith("/etc/netns/"):
                shutil.rmtree(etc, ignore_errors=True)
        path.unlink(missing_ok=True)
    return removed


def libfaketime() -> str:
    """Where Debian's faketime package put its preload library."""
    found = sorted(glob.glob("/usr/lib/*/faketime/libfaketime.so.1"))
    found += sorted(glob.glob("/usr/lib/faketime/libfaketime.so.1"))
    if not found:
        raise HarnessError("libfaketime.so.1 not found: apt-get install -y faketime")
    return found[0]


def setns(path: str) -> None:
    """Move the calling thread into the network namespace at ``path``.

    Python 3.11 has no os.setns. Threads started afterwards inherit the
    namespace, so this must run before gRPC starts any thread."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = os.open(path, os.O_RDONLY)
    try:
        if libc.setns(fd, _CLONE_NEWNET) != 0:
            err = ctypes.get_errno()
            raise HarnessError(f"setns({path}): {os.strerror(err)}")
    finally:
        os.close(fd)


def return_to_netns(fd: int) -> None:
    """Move the calling thread back into the network namespace that ``fd``
    (opened on ``/proc/self/ns/net`` before :func:`setns`) refers to. Best
    effort: it runs during cleanup, which goes on whatever happens."""
    libc = ctypes.CDLL(None, use_errno=True)
    libc.setns(fd, _CLONE_NEWNET)
