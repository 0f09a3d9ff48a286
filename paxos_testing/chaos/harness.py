"""The cluster under test: one network namespace per node, a bridge in a hub.

Layout of one run (``P`` is the run's prefix, unique per run: ``cx<pid>``):

- ``P-hub`` holds the bridge ``br0`` with :data:`HUB_IP`. The controller (this
  process) joins the hub's network namespace once the network is built, so its
  clients and probes reach every node the way a client on the pod network
  would, and only through addresses this run created.
- Every node (``P-a0``, ``P-p1``, ``P-l0``, ...) is a namespace with one veth
  (``eth0``) on the bridge, its own address in :data:`SUBNET` and its own
  iptables tables: a partition is a DROP rule inside a node's namespace, and it
  dies with the namespace.
- Each acceptor keeps its SQLite file on its own small tmpfs, so the nemesis
  can fill its disk. Every acceptor runs under ``fiu-run -x`` with its control
  FIFOs in the run directory, so the nemesis can make its fsync fail.
- Processes are tracked by PID. ``ip netns exec`` and ``fiu-run`` exec the real
  command, so the PID held is the server's own.

:meth:`Harness.close` undoes everything (processes, mounts, namespaces,
``/etc/netns`` files, fiu FIFOs) and runs every step even if one fails.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from paxos_testing.chaos.host import (
    MANIFEST_DIR,
    HarnessError,
    libfaketime,
    return_to_netns,
    run,
    setns,
)
from paxos_testing.chaos.nodes import (
    HUB_IP,
    PORT,
    SUBNET,
    Incarnation,
    Node,
    broken_acceptor_argv,
)

#: Size of each acceptor's data tmpfs: room for a 30-minute run. It takes only the RAM
#: its files use, until the nemesis fills it to make the disk full.
TMPFS_SIZE = "1g"
#: What the fsync fault enables in a running acceptor (libfiu's POSIX wrappers).
FSYNC_FAILPOINT = "posix/io/sync/*"
#: The directory holding the ``paxos_service`` package the controller runs.
SOURCE_ROOT = Path(__file__).resolve().parents[2]


class Harness:
    """Builds the network, runs the nodes, and tears everything down."""

    def __init__(
        self,
        workdir: Path,
        prefix: str | None = None,
        *,
        fake_clocks: bool = False,
        broken_acceptor: str | None = None,
        broken_acceptors: int | None = None,
        retain_log_bytes: int | None = None,
    ) -> None:
        self.workdir = workdir
        #: The learners' --retain-log-bytes: small, so that snapshots, the
        #: compaction point and truncation all run under load (None: default).
        self.retain_log_bytes = retain_log_bytes
        #: Run every proposer under libfaketime, so the nemesis can jump its clock.
        self.fake_clocks = fake_clocks
        #: Test only: run the first ``broken_acceptors`` acceptors (all if None)
        #: deliberately broken in this mode, through the test-only entry point
        #: ``python -m paxos_testing.broken_acceptor`` (see paxos_testing/broken_acceptor.py).
        self.broken_acceptor = broken_acceptor
        self.broken_acceptors = broken_acceptors
        self.prefix = prefix or f"cx{os.getpid()}"
        self.nodes: dict[str, Node] = {}
        self.hub = f"{self.prefix}-hub"
        self._netns: list[str] = []
        self._etc_dirs: list[Path] = []
        self._mounts: list[Path] = []
        self._host_netns_fd: int | None = None
        self.fiu_dir = workdir / "fiu"

    # -- building ------------------------------------------------------------

    def plan(self, acceptors: int = 3, proposers: int = 3, learners: int = 2) -> None:
        """Name every node and give it an address; creates nothing."""
        python = sys.executable
        next_ip = 10
        roles = [("acceptor", "a", acceptors), ("proposer", "p", proposers)]
        roles.append(("learner", "l", learners))
        layout: list[tuple[str, str, int]] = []
        for role, short, count in roles:
            for i in range(count):
                layout.append((role, f"{self.prefix}-{short}{i}", i))
        ips = {}
        for role, _netns, i in layout:
            ips[(role, i)] = f"{SUBNET}.{next_ip}"
            next_ip += 1

        def addresses(role: str) -> str:
            return ",".join(f"{ip}:{PORT}" for (r, _), ip in sorted(ips.items()) if r == role)

        logs = self.workdir / "logs"
        for role, netns, i in layout:
            ip = ips[(role, i)]
            common = [python, "-m", "paxos_service", role, "--id", str(i)]
            common += ["--listen", f"{ip}:{PORT}", "--insecure"]
            data_dir: Path | None = None
            if role == "acceptor":
                data_dir = self.workdir / "data" / f"acceptor-{i}"
                argv = [*common, "--db", str(data_dir / "acceptor.db")]
                argv += ["--acceptors", addresses("acceptor")]  # identity checks on
            elif role == "proposer":
                argv = [*common, "--acceptors", addresses("acceptor")]
                argv += ["--proposers", addresses("proposer"), "--learners", addresses("learner")]
            else:
                argv = [*common, "--acceptors", addresses("acceptor")]
                argv += ["--proposers", addresses("proposer"), "--learners", addresses("learner")]
                argv += ["--db", str(self.workdir / "data" / f"learner-{i}.db")]
                if self.retain_log_bytes is not None:
                    argv += ["--retain-log-bytes", str(self.retain_log_bytes)]
            node = Node(role, i, netns, ip, argv, logs, data_dir, under_fiu=role == "acceptor")
            if role == "proposer" and self.fake_clocks:
                node.clock_file = self.workdir / "clock" / f"{node.name}.faketime"
            broken = self.broken_acceptors if self.broken_acceptors is not None else acceptors
            if role == "acceptor" and self.broken_acceptor and i < broken:
                node.broken_mode = self.broken_acceptor
                node.argv = broken_acceptor_argv(python, self.broken_acceptor, argv)
            self.nodes[node.name] = node

    def create(self) -> None:
        """Namespaces, bridge, veths, hosts files, tmpfs mounts.

        The logs and data of an earlier run in the same directory are removed
        first: a learner must never start from another run's file."""
        for stale in ("logs", "data"):
            shutil.rmtree(self.workdir / stale, ignore_errors=True)
        (self.workdir / "logs").mkdir(parents=True, exist_ok=True)
        (self.workdir / "data").mkdir(parents=True, exist_ok=True)
        self.fiu_dir.mkdir(parents=True, exist_ok=True)
        for node in self.nodes.values():
            if node.clock_file is not None:
                node.clock_file.parent.mkdir(parents=True, exist_ok=True)
                node.clock_file.write_text("+0\n")
        self._add_netns(self.hub)
        run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
        run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        run(["ip", "-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0"])
        run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        for index, node in enumerate(self.nodes.values()):
            self._add_netns(node.netns)
            veth = f"v{index}"
            # Both ends are created straight inside their namespaces: the names
            # never meet in the host's namespace.
            pair = ["type", "veth", "peer", "name", "eth0", "netns", node.netns]
            run(["ip", "link", "add", "name", veth, "netns", self.hub, *pair])
            run(["ip", "-n", self.hub, "link", "set", veth, "master", "br0"])
            run(["ip", "-n", self.hub, "link", "set", veth, "up"])
            run(["ip", "-n", node.netns, "addr", "add", f"{node.ip}/24", "dev", "eth0"])
            run(["ip", "-n", node.netns, "link", "set", "eth0", "up"])
            run(["ip", "-n", node.netns, "link", "set", "lo", "up"])
            self._write_hosts(node.netns, node.name)
            if node.data_dir is not None:
                node.data_dir.mkdir(parents=True, exist_ok=True)
                run(
                    [
                        "mount",
                        "-t",
                        "tmpfs",
                        "-o",
                        f"size={TMPFS_SIZE}",
                        "tmpfs",
                        str(node.data_dir),
                    ]
                )
                self._mounts.append(node.data_dir)
                self._save_manifest()

    def _add_netns(self, name: str) -> None:
        self._netns.append(name)  # first: a half-made one is cleaned up too
        self._save_manifest()
        run(["ip", "netns", "add", name])

    @property
    def manifest(self) -> Path:
        return MANIFEST_DIR / f"{self.prefix}.json"

    def _save_manifest(self) -> None:
        """What this run made, for :func:`sweep_dead_runs` should the
        controller itself be SIGKILLed before it can clean up."""
        MANIFEST_DIR.mkdir(parents=True, exist_ok=True)
        record = {
            "pid": os.getpid(),
            "netns": self._netns,
            "mounts": [str(m) for m in self._mounts],
            "etc": [str(e) for e in self._etc_dirs],
        }
        self.manifest.write_text(json.dumps(record))

    def _write_hosts(self, netns: str, hostname: str) -> None:
        """``ip netns exec`` bind-mounts this over /etc/hosts: every node's name
        resolves inside every node (handy when debugging a run by hand)."""
        etc = Path("/etc/netns") / netns
        etc.mkdir(parents=True, exist_ok=True)
        self._etc_dirs.append(etc)
        self._save_manifest()
        lines = ["127.0.0.1\tlocalhost", f"{HUB_IP}\thub"]
        lines += [f"{n.ip}\t{n.name}" for n in self.nodes.values()]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        (etc / "hostname").write_text(hostname + "\n")

    def enter_hub(self) -> None:
        """Move this process's main thread into the hub's network namespace."""
        self._host_netns_fd = os.open("/proc/self/ns/net", os.O_RDONLY)
        setns(f"/run/netns/{self.hub}")

    def leave_hub(self) -> None:
        if self._host_netns_fd is None:
            return
        return_to_netns(self._host_netns_fd)
        os.close(self._host_netns_fd)
        self._host_netns_fd = None

    # -- processes -----------------------------------------------------------

    def start(self, node: Node) -> None:
        if node.alive():
            raise HarnessError(f"{node.name} is already running")
        self.reap(node)
        node.starts += 1
        prefix = ["ip", "netns", "exec", node.netns]
        if node.under_fiu:
            prefix += ["fiu-run", "-x", "-f", str(self.fiu_dir / "ctrl")]
        if node.clock_file is not None:
            # `env` execs the server, so the PID is still the server's. The
            # file is read again at most once a second.
            prefix += ["env", f"LD_PRELOAD={libfaketime()}"]
            prefix += [f"FAKETIME_TIMESTAMP_FILE={node.clock_file}", "FAKETIME_CACHE_DURATION=1"]
        env = {
            "PATH": os.environ.get("PATH", "/usr/sbin:/usr/bin:/sbin:/bin"),
            "LANG": "C.UTF-8",
            "PYTHONUNBUFFERED": "1",
            # The nodes run the code the controller runs (also from a copy of
            # the source tree), whatever the venv's editable install points at.
            "PYTHONPATH": str(SOURCE_ROOT),
            **node.env,
        }
        with node.log_path.open("ab") as log:
            extra = "".join(f"{k}={shlex.quote(v)} " for k, v in sorted(node.env.items()))
            log.write(f"--- start {node.starts}: {extra}{shlex.join(node.argv)}\n".encode())
            log.flush()
            node.process = subprocess.Popen(
                [*prefix, *node.argv],
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                env=env,
                cwd=str(self.workdir),
                start_new_session=True,
            )
        node.paused = False
        node.incarnations.append(Incarnation(node.starts, node.process.pid, node.log_path))

    def reap(self, node: Node) -> None:
        """Record the exit code of the node's current process if it ended."""
        if node.process is not None and node.incarnations:
            code = node.process.poll()
            if code is not None:
                node.incarnations[-1].exit_code = code

    def start_all(self) -> None:
        for node in self.nodes.values():
            self.start(node)

    def kill(self, node: Node) -> None:
        """SIGKILL (a crash): no chance to flush or say goodbye."""
        if node.process is None:
            return
        if node.process.poll() is None:
            node.incarnations[-1].killed = True
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, signal.SIGKILL)
            node.process.wait(timeout=10)
        self.reap(node)
        node.paused = False
        self._remove_fiu_files(node.process.pid)

    def pause(self, node: Node) -> None:
        if node.alive():
            assert node.process is not None
            os.kill(node.process.pid, signal.SIGSTOP)
            node.paused = True

    def resume(self, node: Node) -> None:
        if node.process is not None and node.paused:
            with contextlib.suppress(ProcessLookupError):
                os.kill(node.process.pid, signal.SIGCONT)
        node.paused = False

    def fiu(self, node: Node, command: str) -> None:
        """Send a libfiu control command (``enable name=...``) to a running node."""
        if not node.under_fiu or not node.alive():
            raise HarnessError(f"{node.name} is not running under fiu-run")
        assert node.process is not None
        run(["fiu-ctrl", "-f", str(self.fiu_dir / "ctrl"), "-c", command, str(node.process.pid)])

    def clock_jump(self, node: Node, seconds: float) -> float:
        """Move the node's clocks (wall and monotonic) forward by ``seconds``;
        returns its new offset. Never backward: a monotonic clock that runs
        backwards is not a fault real hosts have."""
        if node.clock_file is None:
            raise HarnessError(f"{node.name} does not run under libfaketime")
        offset = float(node.clock_file.read_text().strip().lstrip("+") or 0) + seconds
        tmp = node.clock_file.with_suffix(".tmp")
        tmp.write_text(f"+{offset:.3f}\n")
        tmp.replace(node.clock_file)
        return offset

    def _remove_fiu_files(self, pid: int) -> None:
        for path in self.fiu_dir.glob(f"ctrl-{pid}.*"):
            with contextlib.suppress(OSError):
                path.unlink()

    # -- network faults --------------------------------------------------------

    def iptables(self, node: Node, *args: str) -> None:
        run(["ip", "netns", "exec", node.netns, "iptables", "-w", *args])

    def add_rules(self, node: Node, rules: Sequence[str]) -> None:
        """Append filter rules (``-A INPUT -s ... -j DROP``) in one atomic
        ``iptables-restore --noflush``: a partition starts all at once."""
        if not rules:
            return
        text = "*filter\n" + "".join(f"{rule}\n" for rule in rules) + "COMMIT\n"
        argv = ["ip", "netns", "exec", node.netns, "iptables-restore", "-w", "--noflush"]
        proc = subprocess.run(
            argv, input=text, capture_output=True, text=True, timeout=30, check=False
        )
        if proc.returncode != 0:
            raise HarnessError(f"iptables-restore in {node.netns} failed: {proc.stderr.strip()}")

    def flush_rules(self, node: Node) -> None:
        self.iptables(node, "-F")

    def slow_link(self, node: Node, rate_kbit: int) -> None:
        """Squeeze the node's outgoing packets through a token bucket (``tc
        netem`` is missing on this kernel; ``tbf`` works): a slow, congested
        link that delays packets up to 500 ms and drops what overflows."""
        run(["ip", "netns", "exec", node.netns, "tc", "qdisc", "replace", "dev", "eth0", "root",
             "tbf", "rate", f"{rate_kbit}kbit", "burst", "16kbit", "latency", "500ms"])  # fmt: skip

    def fast_link(self, node: Node) -> None:
        run(["ip", "netns", "exec", node.netns, "tc", "qdisc", "del", "dev", "eth0", "root"],
            check=False)  # fmt: skip

    # -- disk ------------------------------------------------------------------

    def fill_disk(self, node: Node) -> int:
        """Fill the node's tmpfs with a filler file; returns the bytes written."""
        if node.data_dir is None:
            raise HarnessError(f"{node.name} has no data tmpfs")
        written = 0
        fd = os.open(node.data_dir / "filler", os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        try:
            for chunk in (1 << 20, 1 << 12, 1):
                block = b"\0" * chunk
                while True:
                    try:
                        written += os.write(fd, block)
                    except OSError as exc:
                        if exc.errno != errno.ENOSPC:
                            raise
                        break
        finally:
            os.close(fd)
        return written

    def wipe(self, node: Node) -> list[str]:
        """Delete a stopped learner's volume (its store, WAL and snapshot):
        what a new disk looks like. Returns the names of what it deleted."""
        if node.alive():
            raise HarnessError(f"{node.name} still runs: kill it before wiping its volume")
        db = Path(node.argv[node.argv.index("--db") + 1])
        gone = []
        for path in sorted(db.parent.glob(db.name + "*")):
            path.unlink()
            gone.append(path.name)
        return gone

    def free_disk(self, node: Node) -> None:
        if node.data_dir is not None:
            with contextlib.suppress(FileNotFoundError):
                (node.data_dir / "filler").unlink()

    # -- teardown --------------------------------------------------------------

    def stop_all(self) -> None:
        """SIGKILL every node (continuing any paused one first) and reap it."""
        for node in self.nodes.values():
            if node.process is None:
                continue
            self.resume(node)
            if node.process.poll() is None:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(node.process.pid, signal.SIGKILL)
            # Anything a server started lives in its session's group.
            with contextlib.suppress(ProcessLookupError, PermissionError):
                os.killpg(node.process.pid, signal.SIGKILL)
            with contextlib.suppress(subprocess.TimeoutExpired):
                node.process.wait(timeout=10)

    def close(self) -> None:
        """Undo everything. Runs every step even if some fail, then reports."""
        errors: list[str] = []
        try:
            self.stop_all()
        except Exception as exc:
            errors.append(f"stopping nodes: {exc!r}")
        self.leave_hub()
        for mount in reversed(self._mounts):
            for attempt in range(5):
                proc = subprocess.run(
                    ["umount", str(mount)], capture_output=True, text=True, check=False
                )
                if proc.returncode == 0:
                    break
                if attempt == 4:
                    errors.append(f"umount {mount}: {proc.stderr.strip()}")
                time.sleep(0.2)
        self._mounts.clear()
        for name in reversed(self._netns):
            try:
                run(["ip", "netns", "delete", name])
            except Exception as exc:
                errors.append(str(exc))
        self._netns.clear()
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        self._etc_dirs.clear()
        shutil.rmtree(self.fiu_dir, ignore_errors=True)
        shutil.rmtree(self.workdir / "clock", ignore_errors=True)
        if not errors:
            self.manifest.unlink(missing_ok=True)
        if errors:
            raise HarnessError("cleanup: " + "; ".join(errors))
