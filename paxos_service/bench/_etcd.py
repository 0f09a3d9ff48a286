"""A 3-member etcd on 127.0.0.1 to compare against, run like the paxos cluster:
every member its own process, data in a temp dir, fsync on (etcd's default,
which cannot be turned off without ``--unsafe-no-fsync``, never passed here).

etcd comes from Debian's ``etcd-server``. If ``etcd`` is not on PATH it is
installed with apt-get, which needs root; otherwise the benchmark stops with
a message saying what to install.
"""

from __future__ import annotations

import http.client
import json
import os
import secrets
import shutil
import subprocess
import sys
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TextIO

from paxos_service.core.processes import stop_all

STARTUP_TIMEOUT = 30.0
STOP_TIMEOUT = 10.0
INSTALL_TIMEOUT = 900.0
DEBIAN_PACKAGE = "etcd-server"


class EtcdUnavailable(RuntimeError):
    """etcd is not installed and could not be installed, or would not start."""


def ensure_etcd(log: TextIO = sys.stderr) -> str:
    """The path of the ``etcd`` binary, installing Debian's etcd-server if needed."""
    found = _find_etcd()
    if found:
        return found
    if shutil.which("apt-get") is None:
        raise EtcdUnavailable(
            "etcd is not on PATH and there is no apt-get to install it: install etcd 3.4+ "
            "(Debian: apt-get install etcd-server) and run again"
        )
    if os.geteuid() != 0:
        raise EtcdUnavailable(
            "etcd is not on PATH; installing it needs root: run `sudo apt-get install -y "
            f"{DEBIAN_PACKAGE}` (or run the benchmark as root) and try again"
        )
    env = {**os.environ, "DEBIAN_FRONTEND": "noninteractive"}
    install = ["apt-get", "install", "-y", "--no-install-recommends", DEBIAN_PACKAGE]
    print(f"etcd not found: {' '.join(install)} ...", file=log, flush=True)
    first = subprocess.run(
        install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
    )
    if first.returncode != 0:
        # A fresh machine often has no package lists yet.
        print("apt-get update ...", file=log, flush=True)
        subprocess.run(
            ["apt-get", "update"],
            env=env,
            capture_output=True,
            text=True,
            timeout=INSTALL_TIMEOUT,
            check=False,
        )
        second = subprocess.run(
            install, env=env, capture_output=True, text=True, timeout=INSTALL_TIMEOUT, check=False
        )
        if second.returncode != 0:
            tail = "\n".join((second.stderr or second.stdout).strip().splitlines()[-5:])
            raise EtcdUnavailable(f"`{' '.join(install)}` failed:\n{tail}")
    found = _find_etcd()
    if not found:
        raise EtcdUnavailable(f"{DEBIAN_PACKAGE} installed, but no etcd binary on PATH")
    return found


def _find_etcd() -> str | None:
    found = shutil.which("etcd")
    if found:
        return found
    # Debian puts it in /usr/bin; a minimal PATH may not have it.
    candidate = Path("/usr/bin/etcd")
    return str(candidate) if candidate.exists() else None


def etcd_version(binary: str) -> str:
    try:
        out = subprocess.run(
            [binary, "--version"], capture_output=True, text=True, timeout=10, check=False
        ).stdout
    except (OSError, subprocess.TimeoutExpired):
        return "unknown"
    for line in out.splitlines():
        if line.lower().startswith("etcd version"):
            return line.split(":", 1)[1].strip()
    return out.strip().splitlines()[0] if out.strip() else "unknown"


@dataclass
class EtcdMember:
    name: str
    client_port: int
    peer_port: int
    data_dir: Path
    log_path: Path
    process: subprocess.Popen[bytes] | None = None

    @property
    def client_address(self) -> str:
        return f"127.0.0.1:{self.client_port}"


class EtcdCluster:
    """``members`` etcd processes; client ports from ``base_port``, then peer ports."""

    def __init__(self, binary: str, data_dir: Path, base_port: int, members: int = 3) -> None:
        self.binary = binary
        self.data_dir = data_dir
        self.members = [
            EtcdMember(
                name=f"etcd-{i}",
                client_port=base_port + i,
                peer_port=base_port + members + i,
                data_dir=data_dir / f"etcd-{i}",
                log_path=data_dir / "logs" / f"etcd-{i}.log",
            )
            for i in range(members)
        ]

    @property
    def endpoints(self) -> list[str]:
        return [m.client_address for m in self.members]

    def start(self) -> None:
        (self.data_dir / "logs").mkdir(parents=True, exist_ok=True)
        initial = ",".join(f"{m.name}=http://127.0.0.1:{m.peer_port}" for m in self.members)
        token = "paxos-bench-" + secrets.token_hex(4)
        for member in self.members:
            client_url = f"http://127.0.0.1:{member.client_port}"
            peer_url = f"http://127.0.0.1:{member.peer_port}"
            command = [
                self.binary,
                "--name", member.name,
                "--data-dir", str(member.data_dir),
                "--listen-client-urls", client_url,
                "--advertise-client-urls", client_url,
                "--listen-peer-urls", peer_url,
                "--initial-advertise-peer-urls", peer_url,
                "--initial-cluster", initial,
                "--initial-cluster-state", "new",
                "--initial-cluster-token", token,
                "--logger", "zap",
                "--log-level", "warn",
            ]  # fmt: skip
            with member.log_path.open("ab") as log_file:
                member.process = subprocess.Popen(
                    command,
                    stdout=log_file,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    start_new_session=True,  # Ctrl-C reaches us; we stop them by PID
                )
        deadline = time.monotonic() + STARTUP_TIMEOUT
        for member in self.members:
            self._wait_healthy(member, deadline)

    def pids(self) -> dict[str, int]:
        return {m.name: m.process.pid for m in self.members if m.process is not None}

    def stop(self) -> None:
        stop_all((member.process for member in self.members), STOP_TIMEOUT)

    def _wait_healthy(self, member: EtcdMember, deadline: float) -> None:
        while True:
            assert member.process is not None
            if member.process.poll() is not None:
                raise EtcdUnavailable(
                    f"{member.name} exited with code {member.process.returncode} while "
                    f"starting:\n{_tail(member.log_path)}"
                )
            if _healthy(member.client_port):
                return
            if time.monotonic() > deadline:
                raise EtcdUnavailable(
                    f"{member.name} at {member.client_address} not healthy after "
                    f"{STARTUP_TIMEOUT}s:\n{_tail(member.log_path)}"
                )
            time.sleep(0.1)


def _healthy(port: int) -> bool:
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=1.0)
    try:
        connection.request("GET", "/health")
        response = connection.getresponse()
        body = response.read()
        return response.status == 200 and json.loads(body).get("health") == "true"
    except (OSError, ValueError, http.client.HTTPException):
        return False
    finally:
        connection.close()


def _tail(path: Path, lines: int = 5) -> str:
    try:
        text = path.read_text(errors="replace").splitlines()
    except OSError:
        return "(no log)"
    return "\n".join("    " + line for line in text[-lines:])
