"""What the boot simulation needs from the host, and how it runs the host's
tools: root, iproute2 and util-linux, each command checked. Every other
module of the simulation builds on this one."""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
from collections.abc import Sequence


class SimError(RuntimeError):
    """The simulation itself could not do something (not a manifest bug)."""


def require_root_and_iproute2() -> None:
    """The boot simulation creates network and mount namespaces."""
    problems = []
    if os.geteuid() != 0:
        problems.append(
            "it must run as root (it creates network namespaces, veth pairs and "
            "mount namespaces); run `make k8s-check` as root, as CI does"
        )
    for tool in ("ip", "unshare", "setpriv", "mount", "nsenter"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is missing: apt-get install -y iproute2 util-linux mount")
    if problems:
        raise SimError("The k8s boot simulation cannot run: " + "; ".join(problems))


def run(argv: Sequence[str], timeout: float = 30) -> str:
    """Run a host command; its stdout, or SimError with its stderr."""
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SimError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout
