"""``python -m paxos_service.bench``: the benchmark, from command line to report.

It starts a local cluster (3 acceptors with fsync on, 2 proposers, 1 learner
holding the KV store) on free ports with data in a temp dir, and, with
``--compare etcd``, a 3-member etcd beside it (:mod:`._systems`). Load comes
from separate worker processes (see :mod:`paxos_service.bench._loadgen`). For
every concurrency level and operation, each system is measured in turn
(:mod:`._runs`), so that both see the same moment of a shared machine; the
report puts them side by side. The options are in :mod:`._args`.

Everything it starts is stopped by PID when it ends, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import os
import platform
import shutil
import signal
import subprocess
import tempfile
import time
from collections.abc import Iterator, Sequence
from pathlib import Path
from types import FrameType
from typing import Any

from paxos_service.bench import _proc, _profile
from paxos_service.bench._args import build_parser
from paxos_service.bench._errors import BenchError
from paxos_service.bench._etcd import EtcdUnavailable, ensure_etcd, etcd_version
from paxos_service.bench._progress import Progress
from paxos_service.bench._report import Report
from paxos_service.bench._runs import Runs
from paxos_service.bench._systems import System, cpu, cpu_delta, rss, start_etcd, start_paxos

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

#: Longest window over which the servers' CPU use with no load is measured.
IDLE_WINDOW = 2.0


class Benchmark:
    def __init__(self, args: argparse.Namespace, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.systems: list[System] = []
        self.runs = Runs(args, progress)
        self.tmp: Path | None = None

    def run(self) -> Report:
        args = self.args
        etcd_binary = ensure_etcd(self.progress.stream) if args.compare == "etcd" else None
        if args.profile:
            self.runs.py_spy = _profile.find_py_spy()
            if self.runs.py_spy is None:
                raise BenchError("--profile needs py-spy: pip install py-spy")
        self.tmp = Path(tempfile.mkdtemp(prefix="paxos-bench-"))
        self.progress.note(f"starting the paxos cluster (data in {self.tmp}) ...")
        start_paxos(args, self.tmp / "paxos", self.systems)
        if etcd_binary is not None:
            self.progress.note("starting a 3-member etcd ...")
            start_etcd(etcd_binary, self.tmp / "etcd", self.systems)
        self.runs.start_workers()
        for system in self.systems:
            self.progress.note(
                f"{system.name}: "
                + ", ".join(f"{name} pid {pid}" for name, pid in system.pids.items())
                + f"; clients use {','.join(system.endpoints)}"
            )
        self.progress.note(
            "load generators: " + ", ".join(f"pid {w.process.pid}" for w in self.runs.workers)
        )
        report = Report(meta=self._meta(etcd_binary))
        for system in self.systems:
            report.rss_before[system.name] = rss(system.pids)
            report.rss_peak[system.name] = dict(report.rss_before[system.name])
            report.disk[system.name] = {"before": _proc.tree_bytes(system.data_dir)}
        report.idle_cpu = self._idle_cpu(min(IDLE_WINDOW, args.duration))
        started = time.monotonic()
        if "get" in args.ops:
            for system in self.systems:
                self.runs.prefill(system)
        self.runs.total = len(args.levels) * len(args.ops) * len(self.systems)
        for level in args.levels:
            for op in args.ops:
                for system in self.systems:
                    record = self.runs.measure(system, op, level, report.rss_peak[system.name])
                    report.runs.append(record)
        for system in self.systems:
            report.rss_after[system.name] = rss(system.pids)
            disk = report.disk[system.name]
            disk["after"] = _proc.tree_bytes(system.data_dir)
            disk["puts"] = system.completed.get("put", 0) + system.completed.get("prefill", 0)
            disk["gets"] = system.completed.get("get", 0)
            disk["seconds"] = round(time.monotonic() - started)
        report.meta["loadavg_end"] = _loadavg()
        return report

    def close(self) -> None:
        """Stop everything this benchmark started, by PID; safe to call twice."""
        self.runs.close()
        systems, self.systems = self.systems, []
        for system in reversed(systems):
            try:
                system.stop()
            except Exception as exc:  # keep stopping the others
                self.progress.note(f"stopping {system.name}: {exc}")
        if self.tmp is not None:
            if self.args.keep:
                self.progress.note(f"kept the servers' data and logs in {self.tmp}")
            else:
                shutil.rmtree(self.tmp, ignore_errors=True)
            self.tmp = None

    def _idle_cpu(self, window: float) -> dict[str, dict[str, float]]:
        """CPU each server process uses per second with no load at all
        (heartbeats, timers, polling): the floor under every run."""
        self.progress.update(f"measuring idle CPU for {window:g}s ...")
        before = {system.name: cpu(system.pids) for system in self.systems}
        time.sleep(window)
        idle = {}
        for system in self.systems:
            delta = cpu_delta(before[system.name], cpu(system.pids))
            idle[system.name] = {name: round(used / window, 4) for name, used in delta.items()}
        self.progress.done(
            "idle CPU (cores): "
            + ", ".join(f"{name} {sum(cores.values()):.3f}" for name, cores in idle.items())
        )
        return idle

    def _meta(self, etcd_binary: str | None) -> dict[str, Any]:
        args = self.args
        title = "paxos-service" + (" vs etcd" if etcd_binary else "")
        return {
            "title": f"{title} (3 acceptors, fsync on; loopback, {os.cpu_count()} CPUs)",
            "started": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
            "levels": list(args.levels),
            "ops": list(args.ops),
            "duration_s": args.duration,
            "warmup_s": args.warmup,
            "value_size": args.value_size,
            "keys": args.keys,
            "timeout_s": args.timeout,
            "load_processes": args.procs,
            "server_log_level": args.log_level,
            "cpus": os.cpu_count(),
            "loadavg_start": _loadavg(),
            "python": platform.python_version(),
            "platform": platform.platform(),
            "git": _git_revision(),
            "etcd": etcd_version(etcd_binary) if etcd_binary else None,
            "endpoints": {s.name: list(s.endpoints) for s in self.systems},
            "pids": {s.name: s.pids for s in self.systems},
        }


def _loadavg() -> list[float] | None:
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return None


def _git_revision() -> str | None:
    here = Path(__file__).resolve().parent
    try:
        revision = subprocess.run(
            ["git", "-C", str(here), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    if revision.returncode != 0:
        return None
    return revision.stdout.strip() + ("+dirty" if dirty.stdout.strip() else "")


@contextlib.contextmanager
def _sigterm_as_interrupt() -> Iterator[None]:
    """SIGTERM stops the benchmark the way Ctrl-C does: cleanly, by PID."""

    def raise_interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    try:
        previous = signal.signal(signal.SIGTERM, raise_interrupt)
    except ValueError:  # not the main thread: leave signals alone
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


def main(argv: Sequence[str] | None = None, prog: str = "paxos bench") -> int:
    """Run the benchmark; print the tables; write JSON (and a PNG if matplotlib
    is installed) under ``--out``. Returns the exit code."""
    try:
        args = build_parser(prog).parse_args(argv)
    except SystemExit as exc:  # argparse exits on --help and on bad usage
        return int(exc.code) if isinstance(exc.code, int) else EXIT_USAGE
    progress = Progress()
    bench = Benchmark(args, progress)
    with _sigterm_as_interrupt():
        try:
            report = bench.run()
        except KeyboardInterrupt:
            progress.note("interrupted: stopping everything the benchmark started ...")
            return EXIT_INTERRUPTED
        except (BenchError, EtcdUnavailable, OSError, RuntimeError) as exc:
            progress.note(f"{prog}: error: {exc}")
            return EXIT_ERROR
        finally:
            bench.close()
    text = report.text()
    print(text, flush=True)
    args.out.mkdir(parents=True, exist_ok=True)
    report.write_json(args.out / "bench.json")
    (args.out / "bench.txt").write_text(text + "\n")
    written = [args.out / "bench.json", args.out / "bench.txt"]
    why_not = report.plot(args.out / "bench.png")
    if why_not is None:
        written.append(args.out / "bench.png")
    else:
        progress.note(why_not)
    print("\nwrote " + ", ".join(str(path) for path in written), flush=True)
    return 0
