"""``python -m paxos_service.bench``: the benchmark, from command line to report.

It starts a local cluster (3 acceptors with fsync on, 2 proposers, 1 learner
holding the KV store) on free ports with data in a temp dir, and, with
``--compare etcd``, a 3-member etcd beside it. Load comes from separate worker
processes (see :mod:`paxos_service.bench._loadgen`). For every concurrency
level and operation, each system is measured in turn, so that both see the
same moment of a shared machine; the report puts them side by side.

Everything it starts is stopped by PID when it ends, fails or is interrupted.
"""

from __future__ import annotations

import argparse
import contextlib
import multiprocessing
import os
import platform
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from multiprocessing.connection import Connection
from multiprocessing.process import BaseProcess
from pathlib import Path
from types import FrameType
from typing import Any, TextIO

from paxos_service.bench import _proc, _profile
from paxos_service.bench._etcd import EtcdCluster, EtcdUnavailable, ensure_etcd, etcd_version
from paxos_service.bench._loadgen import RunSpec, WorkerResult, key_name, worker_main
from paxos_service.bench._ports import free_port_block
from paxos_service.bench._report import Report, RunRecord
from paxos_service.bench._stats import summarize
from paxos_service.client import PaxosError
from paxos_service.cluster import ClusterError, LocalCluster
from paxos_service.kv_client import KvClient

EXIT_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130

OPS = ("put", "get")
DEFAULT_LEVELS = (1, 16, 64, 256)
#: Bounds that keep any invocation finite.
MAX_LEVEL = 4096
MAX_LEVELS = 12
MAX_DURATION = 3600.0
#: Time for workers to build clients and warm their connections.
READY_TIMEOUT = 60.0
#: Seconds between the RSS samples each run keeps (JSON ``rss_timeline``).
RSS_EVERY = 5.0
#: Longest window over which the servers' CPU use with no load is measured.
IDLE_WINDOW = 2.0


class BenchError(RuntimeError):
    pass


# Command line -------------------------------------------------------------------


def _levels(text: str) -> tuple[int, ...]:
    try:
        levels = tuple(int(part) for part in text.split(",") if part.strip())
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected integers like 1,16,64, got {text!r}") from None
    if not levels or len(levels) > MAX_LEVELS:
        raise argparse.ArgumentTypeError(f"give 1 to {MAX_LEVELS} levels, got {text!r}")
    if any(not 1 <= level <= MAX_LEVEL for level in levels):
        raise argparse.ArgumentTypeError(f"each level must be in 1..{MAX_LEVEL}, got {text!r}")
    return tuple(dict.fromkeys(levels))


def _ops(text: str) -> tuple[str, ...]:
    ops = tuple(dict.fromkeys(part.strip() for part in text.split(",") if part.strip()))
    if not ops or any(op not in OPS for op in ops):
        raise argparse.ArgumentTypeError(f"ops are a comma-separated subset of put,get: {text!r}")
    return ops


def _bounded(kind: Callable[[str], Any], low: float, high: float) -> Callable[[str], Any]:
    def convert(text: str) -> Any:
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
        if not low <= value <= high:
            raise argparse.ArgumentTypeError(f"must be in {low:g}..{high:g}, got {text}")
        return value

    convert.__name__ = kind.__name__
    return convert


def build_parser(prog: str = "paxos bench") -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=prog,
        description="Benchmark the KV store on a local cluster (3 acceptors, fsync on), "
        "optionally against a 3-member etcd in the same run.",
    )
    parser.add_argument(
        "--levels",
        type=_levels,
        default=DEFAULT_LEVELS,
        help="concurrent requests to sweep (default 1,16,64,256)",
    )
    parser.add_argument(
        "--duration",
        type=_bounded(float, 0.2, MAX_DURATION),
        default=10.0,
        help="measured seconds per run (default 10)",
    )
    parser.add_argument(
        "--warmup",
        type=_bounded(float, 0.0, 60.0),
        default=1.0,
        help="unmeasured seconds of load before each run's window (default 1)",
    )
    parser.add_argument(
        "--value-size",
        type=_bounded(int, 1, 512 * 1024),
        default=100,
        help="bytes per value (default 100)",
    )
    parser.add_argument(
        "--ops", type=_ops, default=OPS, help="operations to run: put,get (default both)"
    )
    parser.add_argument(
        "--compare",
        choices=["etcd"],
        help="also run a 3-member etcd (Debian etcd-server; apt-installed if missing)",
    )
    parser.add_argument(
        "--out",
        type=Path,
        default=Path("data/bench"),
        help="directory for bench.json, bench.txt and bench.png (default data/bench)",
    )
    parser.add_argument(
        "--procs",
        type=_bounded(int, 1, 64),
        default=2,
        help="load generator processes; a level's requests are split among them (default 2)",
    )
    parser.add_argument(
        "--keys", type=_bounded(int, 1, 1_000_000), default=1000, help="key space (default 1000)"
    )
    parser.add_argument(
        "--timeout",
        type=_bounded(float, 0.1, 60.0),
        default=5.0,
        help="deadline of each request in seconds (default 5)",
    )
    parser.add_argument(
        "--log-level",
        default="info",
        choices=["debug", "info", "warning", "error"],
        help="log level of the paxos servers (default info, as `paxos cluster` runs them)",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample every paxos server with py-spy during each measured window "
        "(pip install py-spy); raw stacks go to OUT/profiles/, a summary to the report",
    )
    parser.add_argument("--seed", type=int, default=1, help="seed of keys and values (default 1)")
    parser.add_argument(
        "--keep", action="store_true", help="keep the servers' data and logs (path printed)"
    )
    return parser


# Processes we start ---------------------------------------------------------------------


@dataclass
class Worker:
    process: BaseProcess
    conn: Connection
    counter: Any  # multiprocessing RawValue('q'): requests completed so far

    def recv(self, timeout: float, what: str) -> Any:
        deadline = time.monotonic() + timeout
        while not self.conn.poll(min(0.5, max(0.0, deadline - time.monotonic()))):
            if not self.process.is_alive():
                raise BenchError(
                    f"load generator {self.process.pid} exited ({self.process.exitcode}) {what}"
                )
            if time.monotonic() >= deadline:
                raise BenchError(
                    f"load generator {self.process.pid} silent for {timeout:g}s {what}"
                )
        try:
            return self.conn.recv()
        except EOFError:
            raise BenchError(f"load generator {self.process.pid} went away {what}") from None

    def stop(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            self.conn.send(("stop",))
        self.process.join(3.0)
        if self.process.is_alive():
            self.process.terminate()
            self.process.join(3.0)
        if self.process.is_alive():
            self.process.kill()
            self.process.join(3.0)
        self.conn.close()


@dataclass
class System:
    """One system under test, as the load generator and the reports see it."""

    name: str
    endpoints: tuple[str, ...]
    pids: dict[str, int]
    data_dir: Path
    stop: Callable[[], None]
    #: Requests completed (warm-up and prefill included), by operation.
    completed: dict[str, int] = field(default_factory=dict)
    #: The last log instance applied (paxos only): instances per run tell how
    #: many commands share one instance (batching).
    log_position: Callable[[], int | None] | None = None


class Progress:
    """One line on stderr, redrawn in place on a terminal; a line per run otherwise."""

    def __init__(self, stream: TextIO = sys.stderr) -> None:
        self.stream = stream
        self.live = stream.isatty()
        self._width = 0

    def update(self, text: str) -> None:
        if self.live:
            self._width = max(self._width, len(text))
            self.stream.write("\r" + text.ljust(self._width))
            self.stream.flush()

    def done(self, text: str) -> None:
        if self.live:
            self.stream.write("\r" + text.ljust(self._width) + "\n")
            self._width = 0
        else:
            self.stream.write(text + "\n")
        self.stream.flush()

    def note(self, text: str) -> None:
        if self.live and self._width:
            self.stream.write("\n")
            self._width = 0
        self.stream.write(text + "\n")
        self.stream.flush()


# The benchmark ---------------------------------------------------------------------------


class Benchmark:
    def __init__(self, args: argparse.Namespace, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.systems: list[System] = []
        self.workers: list[Worker] = []
        self.tmp: Path | None = None
        self.runs_total = 0
        self.runs_done = 0
        self.py_spy: str | None = None
        self.recordings: list[_profile.Recording] = []

    def run(self) -> Report:
        args = self.args
        etcd_binary = ensure_etcd(self.progress.stream) if args.compare == "etcd" else None
        if args.profile:
            self.py_spy = _profile.find_py_spy()
            if self.py_spy is None:
                raise BenchError("--profile needs py-spy: pip install py-spy")
        self.tmp = Path(tempfile.mkdtemp(prefix="paxos-bench-"))
        self.progress.note(f"starting the paxos cluster (data in {self.tmp}) ...")
        self._start_paxos(self.tmp / "paxos")
        if etcd_binary is not None:
            self.progress.note("starting a 3-member etcd ...")
            self._start_etcd(etcd_binary, self.tmp / "etcd")
        self._start_workers()
        for system in self.systems:
            self.progress.note(
                f"{system.name}: "
                + ", ".join(f"{name} pid {pid}" for name, pid in system.pids.items())
                + f"; clients use {','.join(system.endpoints)}"
            )
        self.progress.note(
            "load generators: " + ", ".join(f"pid {w.process.pid}" for w in self.workers)
        )
        report = Report(meta=self._meta(etcd_binary))
        for system in self.systems:
            report.rss_before[system.name] = _rss(system.pids)
            report.rss_peak[system.name] = dict(report.rss_before[system.name])
            report.disk[system.name] = {"before": _proc.tree_bytes(system.data_dir)}
        report.idle_cpu = self._idle_cpu(min(IDLE_WINDOW, args.duration))
        started = time.monotonic()
        if "get" in args.ops:
            for system in self.systems:
                self._prefill(system)
        self.runs_total = len(args.levels) * len(args.ops) * len(self.systems)
        for level in args.levels:
            for op in args.ops:
                for system in self.systems:
                    record = self._measure(system, op, level, report.rss_peak[system.name])
                    report.runs.append(record)
        for system in self.systems:
            report.rss_after[system.name] = _rss(system.pids)
            disk = report.disk[system.name]
            disk["after"] = _proc.tree_bytes(system.data_dir)
            disk["puts"] = system.completed.get("put", 0) + system.completed.get("prefill", 0)
            disk["gets"] = system.completed.get("get", 0)
            disk["seconds"] = round(time.monotonic() - started)
        report.meta["loadavg_end"] = _loadavg()
        return report

    def close(self) -> None:
        """Stop everything this benchmark started, by PID; safe to call twice."""
        recordings, self.recordings = self.recordings, []
        for recording in recordings:
            _profile.stop(recording)
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop()
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

    # Systems --------------------------------------------------------------------

    def _start_paxos(self, data_dir: Path) -> System:
        data_dir.mkdir(parents=True)
        cluster = LocalCluster(
            acceptors=3,
            proposers=2,
            learners=1,
            data_dir=data_dir,
            base_port=free_port_block(6),
            log_level=self.args.log_level,
        )
        system = System("paxos", tuple(cluster.learners), {}, data_dir, cluster.stop)
        # Registered before start(): close() stops a half-started cluster too.
        self.systems.append(system)
        try:
            cluster.start()
        except ClusterError as exc:
            raise BenchError(f"the paxos cluster did not start: {exc}") from None
        system.pids = {
            f"{node.role}-{node.node_id}": node.process.pid
            for node in cluster.nodes
            if node.process is not None
        }
        probe = KvClient(list(system.endpoints), timeout=self.args.timeout)
        previous_stop = system.stop

        def stop() -> None:
            probe.close()
            previous_stop()

        def log_position() -> int | None:
            try:
                return probe.get_detailed(key_name(0), stale=True).applied_instance
            except PaxosError:
                return None

        system.stop, system.log_position = stop, log_position
        return system

    def _start_etcd(self, binary: str, data_dir: Path) -> System:
        cluster = EtcdCluster(binary, data_dir, base_port=free_port_block(6))
        system = System("etcd", tuple(cluster.endpoints), {}, data_dir, cluster.stop)
        self.systems.append(system)  # as above
        try:
            cluster.start()
        except EtcdUnavailable as exc:
            raise BenchError(f"etcd did not start: {exc}") from None
        system.pids = cluster.pids()
        return system

    # Load generators --------------------------------------------------------------

    def _start_workers(self) -> None:
        # spawn, not fork: this process has gRPC threads running (health checks).
        context = multiprocessing.get_context("spawn")
        for _ in range(self.args.procs):
            parent, child = context.Pipe()
            counter = context.RawValue("q", 0)
            process = context.Process(
                target=worker_main, args=(child, counter), name="paxos-bench-load", daemon=True
            )
            process.start()
            child.close()
            self.workers.append(Worker(process, parent, counter))

    def _spec(self, system: System, op: str, tasks: int, seed: int) -> RunSpec:
        args = self.args
        return RunSpec(
            target=system.name,
            endpoints=system.endpoints,
            op=op,
            tasks=tasks,
            warmup=args.warmup,
            duration=args.duration,
            value_size=args.value_size,
            keys=args.keys,
            timeout=args.timeout,
            seed=seed,
        )

    def _start_run(self, system: System, op: str, shares: list[int]) -> tuple[list[Worker], float]:
        active = [(w, n) for w, n in zip(self.workers, shares, strict=True) if n > 0]
        for index, (worker, tasks) in enumerate(active):
            worker.counter.value = 0
            worker.conn.send(("run", self._spec(system, op, tasks, self.args.seed * 7919 + index)))
        for worker, _ in active:
            message = worker.recv(READY_TIMEOUT + 3 * self.args.timeout, f"preparing {op}")
            if message[0] != "ready":
                raise BenchError(f"{system.name} {op}: load generator failed: {message[-1]}")
        start_at = time.monotonic() + 0.05
        for worker, _ in active:
            worker.conn.send(("go", start_at))
        return [w for w, _ in active], start_at

    def _results(self, workers: list[Worker], what: str) -> list[WorkerResult]:
        results = []
        for worker in workers:
            message = worker.recv(self.args.timeout * 2 + 15.0, what)
            if message[0] != "result":
                raise BenchError(f"{what}: load generator failed: {message[-1]}")
            results.append(message[1])
        return results

    def _prefill(self, system: System) -> None:
        keys = self.args.keys
        tasks = min(32, keys)
        workers, _ = self._start_run(system, "prefill", [tasks] + [0] * (len(self.workers) - 1))
        while True:
            done = workers[0].counter.value
            self.progress.update(f"{system.name}: writing {keys} keys for the gets  {done}/{keys}")
            if workers[0].conn.poll(0.2):
                break
        (result,) = self._results(workers, f"{system.name} prefill")
        failed = sum(result.errors.values())
        system.completed["prefill"] = system.completed.get("prefill", 0) + keys - failed
        self.progress.done(f"{system.name}: wrote {keys - failed} keys for the gets")
        if failed:
            raise BenchError(
                f"{system.name}: {failed} of {keys} prefill writes failed: {result.error_samples}"
            )

    def _measure(self, system: System, op: str, level: int, rss_peak: dict[str, int]) -> RunRecord:
        args = self.args
        self.runs_done += 1
        label = f"[{self.runs_done}/{self.runs_total}] {system.name:<5} {op:<3} c={level:<4}"
        shares = _split(level, len(self.workers))
        first_instance = system.log_position() if system.log_position else None
        workers, start_at = self._start_run(system, op, shares)
        window_start = start_at + args.warmup
        window_end = window_start + args.duration
        recordings: list[_profile.Recording] = []
        cpu_before: dict[str, float | None] | None = None
        cpu_after: dict[str, float | None] | None = None
        last_count, last_time = 0, time.monotonic()
        rate = 0.0
        next_rss = 0.0
        rss_timeline: list[tuple[float, dict[str, int]]] = []
        while cpu_after is None:
            now = time.monotonic()
            if cpu_before is None and now >= window_start:
                cpu_before = _cpu(system.pids)
                recordings = self.recordings = self._start_profiles(system, op, level)
            if now >= window_end:
                cpu_after = _cpu(system.pids)
                break
            if now >= next_rss:
                rss_now = _rss(system.pids)
                _update_peak(rss_peak, rss_now)
                if not rss_timeline or now - start_at - rss_timeline[-1][0] >= RSS_EVERY:
                    rss_timeline.append((round(now - start_at, 1), rss_now))
                next_rss = now + 1.0
            for worker in workers:
                if not worker.process.is_alive():
                    raise BenchError(f"load generator {worker.process.pid} died during {label}")
            count = sum(w.counter.value for w in workers)
            if now - last_time >= 0.5:
                rate = (count - last_count) / (now - last_time)
                last_count, last_time = count, now
            elapsed = max(0.0, now - start_at)
            total = args.warmup + args.duration
            self.progress.update(
                f"{label} {_bar(elapsed / total)} {elapsed:5.1f}/{total:.0f}s "
                f"{count:>8} ops {rate:>8.0f}/s"
            )
            wake = window_start if cpu_before is None and now < window_start else window_end
            time.sleep(max(0.0, min(0.2, wake - now)))
        results = self._results(workers, label)
        profiles = {r.name: _profile.finish(r, timeout=args.duration + 30.0) for r in recordings}
        self.recordings = []
        _update_peak(rss_peak, _rss(system.pids))
        completed = sum(w.counter.value for w in workers)
        last_instance = system.log_position() if system.log_position else None
        instances = (
            last_instance - first_instance
            if first_instance is not None and last_instance is not None
            else None
        )
        latencies = [value for result in results for value in result.latencies]
        errors: dict[str, int] = {}
        samples: list[str] = []
        for result in results:
            for name, count in result.errors.items():
                errors[name] = errors.get(name, 0) + count
            samples.extend(s for s in result.error_samples if s not in samples)
        assert cpu_before is not None
        record = RunRecord(
            target=system.name,
            op=op,
            level=level,
            duration_s=args.duration,
            ops=len(latencies),
            latency=summarize(latencies),
            errors=errors,
            error_samples=samples[:5],
            misses=sum(result.misses for result in results),
            cpu_s=_cpu_delta(cpu_before, cpu_after),
            loadgen_cpu_s=sum(result.cpu_s for result in results),
            rss_bytes=_rss(system.pids),
            profiles=profiles,
            log_instances=instances,
            completed=completed,
            rss_timeline=rss_timeline,
        )
        system.completed[op] = system.completed.get(op, 0) + completed
        lat = record.latency
        self.progress.done(
            f"{label} {record.throughput:9.1f} ops/s  p50 {lat.p50_ms:.2f} ms  "
            f"p99 {lat.p99_ms:.2f} ms  errors {record.error_count}"
        )
        return record

    def _start_profiles(self, system: System, op: str, level: int) -> list[_profile.Recording]:
        # py-spy reads CPython stacks; etcd is Go, and has pprof for that.
        if self.py_spy is None or system.name != "paxos":
            return []
        directory = self.args.out / "profiles"
        directory.mkdir(parents=True, exist_ok=True)
        return [
            _profile.start(
                self.py_spy,
                name,
                pid,
                self.args.duration,
                directory / f"{system.name}-{op}-c{level}-{name}.txt",
            )
            for name, pid in system.pids.items()
        ]

    def _idle_cpu(self, window: float) -> dict[str, dict[str, float]]:
        """CPU each server process uses per second with no load at all
        (heartbeats, timers, polling): the floor under every run."""
        self.progress.update(f"measuring idle CPU for {window:g}s ...")
        before = {system.name: _cpu(system.pids) for system in self.systems}
        time.sleep(window)
        idle = {}
        for system in self.systems:
            delta = _cpu_delta(before[system.name], _cpu(system.pids))
            idle[system.name] = {name: round(cpu / window, 4) for name, cpu in delta.items()}
        self.progress.done(
            "idle CPU (cores): "
            + ", ".join(f"{name} {sum(cpu.values()):.3f}" for name, cpu in idle.items())
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


# Helpers ---------------------------------------------------------------------------------


def _split(total: int, parts: int) -> list[int]:
    """``total`` tasks over ``parts`` workers, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]


def _cpu(pids: dict[str, int]) -> dict[str, float | None]:
    return {name: _proc.cpu_seconds(pid) for name, pid in pids.items()}


def _cpu_delta(before: dict[str, float | None], after: dict[str, float | None]) -> dict[str, float]:
    out = {}
    for name, start in before.items():
        end = after.get(name)
        out[name] = end - start if start is not None and end is not None else 0.0
    return out


def _rss(pids: dict[str, int]) -> dict[str, int]:
    return {name: _proc.rss_bytes(pid) or 0 for name, pid in pids.items()}


def _update_peak(peak: dict[str, int], now: dict[str, int]) -> None:
    for name, value in now.items():
        peak[name] = max(peak.get(name, 0), value)


def _bar(fraction: float, width: int = 12) -> str:
    filled = int(max(0.0, min(1.0, fraction)) * width)
    return "[" + "#" * filled + "." * (width - filled) + "]"


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
        )
        dirty = subprocess.run(
            ["git", "-C", str(here), "status", "--porcelain", "--untracked-files=no"],
            capture_output=True,
            text=True,
            timeout=5,
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
