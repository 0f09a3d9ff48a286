"""The measured runs: for one system, one operation and one concurrency level,
load from every load generator at once, a warm-up, then a measured window
with the servers' CPU, memory and (with ``--profile``) stacks sampled."""

from __future__ import annotations

import argparse
import time

from paxos_service.bench import _proc, _profile
from paxos_service.bench._errors import BenchError
from paxos_service.bench._loadgen import RunSpec, WorkerResult
from paxos_service.bench._progress import Progress, bar
from paxos_service.bench._report import RunRecord
from paxos_service.bench._stats import summarize
from paxos_service.bench._systems import System, cpu, cpu_delta, rss, update_peak
from paxos_service.bench._workers import Worker, start_worker

#: Time for workers to build clients and warm their connections.
READY_TIMEOUT = 60.0
#: Seconds between the RSS samples each run keeps (JSON ``rss_timeline``).
RSS_EVERY = 5.0


class Runs:
    """The load generators and the runs made with them, counted for the
    progress line. What is started here is stopped by :meth:`close`."""

    def __init__(self, args: argparse.Namespace, progress: Progress) -> None:
        self.args = args
        self.progress = progress
        self.workers: list[Worker] = []
        #: py-spy's path, with --profile.
        self.py_spy: str | None = None
        #: The profiles of the run under way, stopped by close() if it is interrupted.
        self.recordings: list[_profile.Recording] = []
        self.total = 0
        self.done = 0

    def start_workers(self) -> None:
        for _ in range(self.args.procs):
            self.workers.append(start_worker())

    def close(self) -> None:
        """Stop the profiles and the load generators; safe to call twice."""
        recordings, self.recordings = self.recordings, []
        for recording in recordings:
            _profile.stop(recording)
        workers, self.workers = self.workers, []
        for worker in workers:
            worker.stop()

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

    def prefill(self, system: System) -> None:
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

    def measure(self, system: System, op: str, level: int, rss_peak: dict[str, int]) -> RunRecord:
        args = self.args
        self.done += 1
        label = f"[{self.done}/{self.total}] {system.name:<5} {op:<3} c={level:<4}"
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
        disk_timeline: list[tuple[float, dict[str, int]]] = []
        while cpu_after is None:
            now = time.monotonic()
            if cpu_before is None and now >= window_start:
                cpu_before = cpu(system.pids)
                recordings = self.recordings = self._start_profiles(system, op, level)
            if now >= window_end:
                cpu_after = cpu(system.pids)
                break
            if now >= next_rss:
                rss_now = rss(system.pids)
                update_peak(rss_peak, rss_now)
                if not rss_timeline or now - start_at - rss_timeline[-1][0] >= RSS_EVERY:
                    rss_timeline.append((round(now - start_at, 1), rss_now))
                    disk_timeline.append(
                        (round(now - start_at, 1), _proc.node_bytes(system.data_dir))
                    )
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
                f"{label} {bar(elapsed / total)} {elapsed:5.1f}/{total:.0f}s "
                f"{count:>8} ops {rate:>8.0f}/s"
            )
            wake = window_start if cpu_before is None and now < window_start else window_end
            time.sleep(max(0.0, min(0.2, wake - now)))
        results = self._results(workers, label)
        profiles = {r.name: _profile.finish(r, timeout=args.duration + 30.0) for r in recordings}
        self.recordings = []
        update_peak(rss_peak, rss(system.pids))
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
            cpu_s=cpu_delta(cpu_before, cpu_after),
            loadgen_cpu_s=sum(result.cpu_s for result in results),
            rss_bytes=rss(system.pids),
            profiles=profiles,
            log_instances=instances,
            completed=completed,
            rss_timeline=rss_timeline,
            disk_timeline=disk_timeline,
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


def _split(total: int, parts: int) -> list[int]:
    """``total`` tasks over ``parts`` workers, as evenly as possible."""
    return [total // parts + (1 if i < total % parts else 0) for i in range(parts)]
