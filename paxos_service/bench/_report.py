"""What a benchmark run found: records, the text tables, the JSON file and the plot."""

from __future__ import annotations

import importlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from paxos_service.bench._stats import LatencySummary, ratio

MIB = 1024 * 1024
#: Functions per process in the text report's profile summaries.
PROFILE_LINES = 8


@dataclass
class RunRecord:
    """One (system, operation, concurrency) measurement."""

    target: str
    op: str
    level: int
    duration_s: float
    ops: int
    latency: LatencySummary
    errors: dict[str, int]
    error_samples: list[str]
    misses: int
    #: CPU seconds each server process used inside the measured window.
    cpu_s: dict[str, float]
    #: CPU seconds the load generator processes used inside the window.
    loadgen_cpu_s: float
    #: Resident memory of each server process at the end of the run.
    rss_bytes: dict[str, int]
    #: py-spy summaries per server process (``--profile``), else empty.
    profiles: dict[str, dict[str, Any]] = field(default_factory=dict)
    #: Log instances decided during the run, warm-up included (paxos only).
    log_instances: int | None = None
    #: Requests completed during the run, warm-up included.
    completed: int = 0
    #: (seconds since the run started, RSS bytes per server process).
    rss_timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)
    #: Bytes on disk per node, every few seconds of the run (bench/_proc.node_bytes).
    disk_timeline: list[tuple[float, dict[str, int]]] = field(default_factory=list)

    @property
    def commands_per_instance(self) -> float | None:
        if not self.log_instances:
            return None
        return self.completed / self.log_instances

    @property
    def throughput(self) -> float:
        return self.ops / self.duration_s if self.duration_s > 0 else 0.0

    @property
    def error_count(self) -> int:
        return sum(self.errors.values())

    def as_dict(self) -> dict[str, Any]:
        return {
            "target": self.target,
            "op": self.op,
            "level": self.level,
            "duration_s": self.duration_s,
            "ops": self.ops,
            "throughput": round(self.throughput, 2),
            "latency_ms": self.latency.as_dict(),
            "errors": self.error_count,
            "errors_by_type": self.errors,
            "error_samples": self.error_samples,
            "misses": self.misses,
            "cpu_s": {name: round(value, 3) for name, value in self.cpu_s.items()},
            "cpu_s_total": round(sum(self.cpu_s.values()), 3),
            "loadgen_cpu_s": round(self.loadgen_cpu_s, 3),
            "rss_bytes": self.rss_bytes,
            "profiles": self.profiles,
            "completed_with_warmup": self.completed,
            "log_instances": self.log_instances,
            "commands_per_instance": _round(self.commands_per_instance),
            "rss_timeline": [[t, rss] for t, rss in self.rss_timeline],
            "disk_timeline": [[t, disk] for t, disk in self.disk_timeline],
        }


@dataclass
class Report:
    meta: dict[str, Any]
    runs: list[RunRecord] = field(default_factory=list)
    #: Per system: process name -> RSS bytes before the first run / after the last.
    rss_before: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_after: dict[str, dict[str, int]] = field(default_factory=dict)
    rss_peak: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Per system: bytes on disk before and after, requests completed, seconds between.
    disk: dict[str, dict[str, int]] = field(default_factory=dict)
    #: Per system: process name -> CPU cores used with no load.
    idle_cpu: dict[str, dict[str, float]] = field(default_factory=dict)

    def find(self, target: str, op: str, level: int) -> RunRecord | None:
        for run in self.runs:
            if (run.target, run.op, run.level) == (target, op, level):
                return run
        return None

    def ratios(self, ours: str = "paxos", theirs: str = "etcd") -> list[dict[str, Any]]:
        """``ours / theirs`` for every (op, level) both were measured at.
        Throughput above 1 is better for us; latency below 1 is."""
        rows = []
        for run in self.runs:
            if run.target != ours:
                continue
            other = self.find(theirs, run.op, run.level)
            if other is None:
                continue
            rows.append(
                {
                    "op": run.op,
                    "level": run.level,
                    "throughput": _round(ratio(run.throughput, other.throughput)),
                    "p50": _round(ratio(run.latency.p50_ms, other.latency.p50_ms)),
                    "p95": _round(ratio(run.latency.p95_ms, other.latency.p95_ms)),
                    "p99": _round(ratio(run.latency.p99_ms, other.latency.p99_ms)),
                    "cpu_per_op": _round(
                        ratio(
                            _cpu_per_op(run),
                            _cpu_per_op(other),
                        )
                    ),
                }
            )
        return rows

    def as_dict(self) -> dict[str, Any]:
        return {
            "schema": 1,
            "meta": self.meta,
            "runs": [run.as_dict() for run in self.runs],
            "ratios_to_etcd": self.ratios(),
            "memory": {
                "rss_bytes_before": self.rss_before,
                "rss_bytes_after": self.rss_after,
                "rss_bytes_peak": self.rss_peak,
            },
            "disk": self.disk,
            "idle_cpu_cores": self.idle_cpu,
        }

    def write_json(self, path: Path) -> None:
        path.write_text(json.dumps(self.as_dict(), indent=2) + "\n")

    # Text ---------------------------------------------------------------

    def text(self) -> str:
        sections = [
            self._text_runs(),
            self._text_ratios(),
            *(self._text_cpu(target) for target in dict.fromkeys(r.target for r in self.runs)),
            self._text_memory(),
            self._text_idle_cpu(),
            self._text_disk(),
            *(
                _text_profile(run, name, profile)
                for run in self.runs
                for name, profile in run.profiles.items()
            ),
            self._text_errors(),
        ]
        return "\n".join(line for section in sections for line in section)

    def _text_runs(self) -> list[str]:
        """The title line and one row per run; the only section with no blank line before it."""
        meta = self.meta
        out = [
            f"{meta.get('title', 'paxos-service benchmark')}: {meta.get('value_size')}-byte "
            f"values, {meta.get('keys')} keys, {meta.get('duration_s')} s per run after "
            f"{meta.get('warmup_s')} s warm-up, load generator processes: "
            f"{meta.get('load_processes')}, "
            f"{meta.get('cpus')} CPUs (load average {meta.get('loadavg_start')} at start)",
            "",
            f"{'LEVEL':>5}  {'OP':<4} {'SYSTEM':<6} {'OPS/S':>9} {'P50 MS':>8} {'P95 MS':>8} "
            f"{'P99 MS':>8} {'MAX MS':>8} {'ERRORS':>6}  {'SERVER CPU/S':>12}",
        ]
        for run in self.runs:
            lat = run.latency
            cpu_rate = sum(run.cpu_s.values()) / run.duration_s if run.duration_s else 0.0
            out.append(
                f"{run.level:>5}  {run.op:<4} {run.target:<6} {run.throughput:>9.1f} "
                f"{lat.p50_ms:>8.2f} {lat.p95_ms:>8.2f} {lat.p99_ms:>8.2f} {lat.max_ms:>8.2f} "
                f"{run.error_count:>6}  {cpu_rate:>12.2f}"
            )
        return out

    def _text_ratios(self) -> list[str]:
        ratios = self.ratios()
        if not ratios:
            return []
        out = [
            "",
            "Ratio paxos/etcd (throughput: above 1 is better; latency: below 1 is better)",
            f"{'LEVEL':>5}  {'OP':<4} {'OPS/S':>7} {'P50':>7} {'P95':>7} {'P99':>7} {'CPU/OP':>7}",
        ]
        for row in ratios:
            out.append(
                f"{row['level']:>5}  {row['op']:<4} {_x(row['throughput'])} {_x(row['p50'])} "
                f"{_x(row['p95'])} {_x(row['p99'])} {_x(row['cpu_per_op'])}"
            )
        return out

    def _text_cpu(self, target: str) -> list[str]:
        """CPU seconds per process for one system's runs."""
        runs = [run for run in self.runs if run.target == target]
        names = list(runs[0].cpu_s)
        batching = any(run.log_instances for run in runs)
        out = [
            "",
            f"{target}: CPU seconds per process in each {runs[0].duration_s:g} s window; "
            "load-gen: all load generator processes; CPU MS/OP: all servers"
            + ("; CMD/INST: requests per log instance" if batching else ""),
            f"{'LEVEL':>5}  {'OP':<4} "
            + " ".join(f"{n:>11}" for n in names)
            + f" {'load-gen':>9} {'CPU MS/OP':>9}"
            + (f" {'CMD/INST':>8}" if batching else ""),
        ]
        for run in runs:
            cells = " ".join(f"{run.cpu_s.get(n, 0.0):>11.2f}" for n in names)
            line = (
                f"{run.level:>5}  {run.op:<4} {cells} {run.loadgen_cpu_s:>9.2f} "
                f"{_cpu_per_op(run) * 1000:>9.2f}"
            )
            if batching:
                per = run.commands_per_instance
                line += f" {per:>8.2f}" if per is not None else f" {'-':>8}"
            out.append(line)
        return out

    def _text_memory(self) -> list[str]:
        if not self.rss_before:
            return []
        out = [
            "",
            "Resident memory (MiB): before the first run, after the last, peak",
            f"{'PROCESS':<14} {'BEFORE':>8} {'AFTER':>8} {'PEAK':>8}",
        ]
        for target, before in self.rss_before.items():
            after = self.rss_after.get(target, {})
            peak = self.rss_peak.get(target, {})
            for name, value in before.items():
                out.append(
                    f"{name:<14} {value / MIB:>8.1f} {after.get(name, 0) / MIB:>8.1f} "
                    f"{peak.get(name, 0) / MIB:>8.1f}"
                )
        return out

    def _text_idle_cpu(self) -> list[str]:
        if not self.idle_cpu:
            return []
        out = ["", "Idle CPU (cores used with no load, before the first run)"]
        for target, idle in self.idle_cpu.items():
            cells = ", ".join(f"{name} {cores:.3f}" for name, cores in idle.items())
            out.append(f"{target:<6} {sum(idle.values()):.3f}: {cells}")
        return out

    def _text_disk(self) -> list[str]:
        if not self.disk:
            return []
        out = [
            "",
            "Disk (every member's data directory; etcd preallocates its WAL): "
            "before, after, growth",
        ]
        for target, disk in self.disk.items():
            puts, gets = disk.get("puts", 0), disk.get("gets", 0)
            growth = disk.get("after", 0) - disk.get("before", 0)
            per_put = f"{growth / puts:.0f} B/put" if puts else "-"
            seconds = disk.get("seconds", 0)
            per_minute = f"{growth / MIB / seconds * 60:.1f} MiB/min" if seconds else "-"
            out.append(
                f"{target:<6} {disk.get('before', 0) / MIB:>8.1f} MiB "
                f"{disk.get('after', 0) / MIB:>8.1f} MiB  +{growth / MIB:.1f} MiB "
                f"({puts} puts, {gets} gets: {per_put}, {per_minute})"
            )
        for run in self.runs:
            if len(run.disk_timeline) < 4:
                continue
            nodes = sorted({name for _, sample in run.disk_timeline for name in sample})
            cells = []
            for name in nodes:
                values = [sample.get(name, 0) / MIB for _, sample in run.disk_timeline]
                cells.append(f"{name} {values[0]:.1f}->{values[-1]:.1f} (max {max(values):.1f})")
            span = run.disk_timeline[-1][0] - run.disk_timeline[0][0]
            out.append(
                f"{run.target} {run.op} c={run.level}, MiB per node over {span:.0f} s: "
                + ", ".join(cells)
            )
        return out

    def _text_errors(self) -> list[str]:
        errors = [run for run in self.runs if run.error_samples]
        if not errors:
            return []
        out = ["", "Errors (samples)"]
        for run in errors:
            for sample in run.error_samples:
                out.append(f"  {run.target} {run.op} c={run.level}: {sample}")
        return out

    # Plot ---------------------------------------------------------------

    def plot(self, path: Path) -> str | None:
        """Write a PNG (throughput and latency against concurrency); return
        why not if matplotlib is not installed (it is not a dependency)."""
        try:
            # Through importlib, so the type checker needs no matplotlib either.
            matplotlib: Any = importlib.import_module("matplotlib")
            matplotlib.use("Agg")
            plt: Any = importlib.import_module("matplotlib.pyplot")
        except ImportError:
            return "matplotlib is not installed: no plot (pip install matplotlib for one)"
        fig, (ax_thr, ax_lat) = plt.subplots(1, 2, figsize=(12, 4.8))
        series = dict.fromkeys((run.target, run.op) for run in self.runs)
        for target, op in series:
            runs = sorted(
                (r for r in self.runs if (r.target, r.op) == (target, op)), key=lambda r: r.level
            )
            levels = [r.level for r in runs]
            style = "-" if target == "paxos" else "--"
            marker = "o" if op == "put" else "s"
            label = f"{target} {op}"
            ax_thr.plot(levels, [r.throughput for r in runs], style, marker=marker, label=label)
            (line,) = ax_lat.plot(
                levels, [r.latency.p50_ms for r in runs], style, marker=marker, label=f"{label} p50"
            )
            ax_lat.plot(
                levels,
                [r.latency.p99_ms for r in runs],
                style,
                marker=marker,
                alpha=0.45,
                color=line.get_color(),
                label=f"{label} p99",
            )
        levels_run = sorted({run.level for run in self.runs})
        for ax in (ax_thr, ax_lat):
            ax.set_xscale("log", base=2)
            ax.set_xticks(levels_run, [str(level) for level in levels_run])
            ax.minorticks_off()
            ax.set_xlabel("concurrent requests (closed loop)")
            ax.grid(True, which="both", alpha=0.3)
            ax.legend(fontsize=8)
        ax_thr.set_ylabel("operations/s")
        ax_thr.set_title("Throughput")
        ax_lat.set_yscale("log")
        ax_lat.set_ylabel("latency, ms (p50 solid, p99 faint)")
        ax_lat.set_title("Latency")
        fig.suptitle(str(self.meta.get("title", "paxos-service benchmark")), fontsize=10)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)
        self._plot_disk(plt, path.with_name(path.stem + "-disk.png"))
        return None

    def _plot_disk(self, plt: Any, path: Path) -> None:
        """Disk bytes per node over each run that lasted long enough to show
        a trend (at least four samples): flat when compaction keeps up."""
        runs = [r for r in self.runs if len(r.disk_timeline) >= 4]
        if not runs:
            return
        fig, axes = plt.subplots(1, len(runs), figsize=(6 * len(runs), 4.2), squeeze=False)
        for ax, run in zip(axes[0], runs, strict=True):
            nodes = sorted({name for _, sample in run.disk_timeline for name in sample})
            for name in nodes:
                ax.plot(
                    [t for t, _ in run.disk_timeline],
                    [sample.get(name, 0) / MIB for _, sample in run.disk_timeline],
                    label=name,
                )
            ax.set_xlabel("seconds into the run")
            ax.set_ylabel("MiB on disk")
            ax.set_title(f"{run.target} {run.op} c={run.level}: disk per node")
            ax.grid(True, alpha=0.3)
            ax.legend(fontsize=7)
        fig.tight_layout()
        fig.savefig(path, dpi=110)
        plt.close(fig)


def _text_profile(run: RunRecord, name: str, profile: dict[str, Any]) -> list[str]:
    """One server process's py-spy summary (or why there is none)."""
    where = f"py-spy {run.target} {run.op} c={run.level} {name}"
    if "error" in profile:
        return ["", f"{where}: {profile['error']}"]
    out = ["", f"{where}: {profile['samples']} samples holding the GIL; most self time:"]
    out.extend(
        f"  {pct:5.1f}%  {function}" for function, pct in profile["self_pct"][:PROFILE_LINES]
    )
    out.append("  ... and most inclusive time (dispatch frames left out):")
    out.extend(
        f"  {pct:5.1f}%  {function}" for function, pct in profile["inclusive_pct"][:PROFILE_LINES]
    )
    return out


def _cpu_per_op(run: RunRecord) -> float:
    return sum(run.cpu_s.values()) / run.ops if run.ops else 0.0


def _round(value: float | None) -> float | None:
    return None if value is None else round(value, 3)


def _x(value: float | None) -> str:
    return f"{'-':>7}" if value is None else f"{value:>6.2f}x"
