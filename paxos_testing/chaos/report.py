"""The run's report: availability gaps, the summary table, JSON, and a timeline PNG.

Availability is measured on the clients' own record: a *successful write*
is a put or compare-and-swap whose reply came (``ok``; both go through the
log). For every fault window the report gives the longest stretch of the
window with no successful write completing (the window's edges count as
boundaries), and the same for the heal window that follows it. The availability
targets (1 s when a single non-leader node is hit, 2 s for the leader) are
shown beside the gap; they are reported, not enforced.
"""

from __future__ import annotations

import itertools
import json
import statistics
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from paxos_testing.chaos.checkers import Result, as_mapping
from paxos_testing.chaos.schedule import FaultRecord
from paxos_testing.linearizability import Operation

#: The printed table lists every fault up to this many, else the worst ones.
MAX_FAULT_ROWS = 20


def write_completions(history: Sequence[Operation]) -> list[float]:
    """When each successful write completed, sorted."""
    return sorted(
        op.complete
        for op in history
        if op.status == "ok" and op.kind in ("put", "cas", "delete") and op.complete is not None
    )


def longest_gap(times: Sequence[float], lo: float, hi: float) -> float:
    """The longest interval within [lo, hi] containing none of ``times``
    (sorted); the edges count as boundaries."""
    if hi <= lo:
        return 0.0
    inside = [t for t in times if lo < t < hi]
    return max(b - a for a, b in itertools.pairwise([lo, *inside, hi]))


def availability(
    records: Sequence[FaultRecord], history: Sequence[Operation], end: float
) -> list[dict[str, Any]]:
    """One row per fault: its gap while on and after healing (seconds)."""
    times = write_completions(history)
    rows = []
    for i, r in enumerate(records):
        if r.started is None or r.healed is None:
            continue
        following = records[i + 1].started if i + 1 < len(records) else None
        heal_end = following if following is not None else end
        during = longest_gap(times, r.started, r.healed)
        after = longest_gap(times, r.healed, heal_end)
        first_after = next((t - r.healed for t in times if t > r.healed), None)
        target = r.gap_target
        rows.append(
            {
                "index": r.planned.index,
                "kind": r.kind,
                "targets": r.targets,
                "hit_leader": r.hit_leader,
                "window": [round(r.started, 3), round(r.healed, 3)],
                "gap_during": round(during, 3),
                "gap_after_heal": round(after, 3),
                "first_write_after_heal": None if first_after is None else round(first_after, 3),
                "target": target,
                "target_met": None if target is None else during <= target,
            }
        )
    return rows


#: Kinds that hit one node, which may or may not lead when the fault starts.
_MAYBE_LEADER = ("kill", "pause", "partition-one-way", "partition-flap", "slow-link", "clock-jump")


def availability_by_kind(rows: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """The gaps per kind of fault (a kind that hit the leader apart from
    the same kind that hit another node): count, median and worst, and how
    often the target was met."""
    groups: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        kind = row["kind"]
        if kind in _MAYBE_LEADER and row["hit_leader"]:
            kind += " (leader)"
        groups.setdefault(kind, []).append(row)
    out = []
    for kind, group in sorted(groups.items()):
        during = sorted(r["gap_during"] for r in group)
        after = sorted(r["gap_after_heal"] for r in group)
        judged = [r["target_met"] for r in group if r["target"] is not None]
        out.append(
            {
                "kind": kind,
                "faults": len(group),
                "gap_during_median": round(statistics.median(during), 2),
                "gap_during_max": round(during[-1], 2),
                "gap_after_heal_median": round(statistics.median(after), 2),
                "gap_after_heal_max": round(after[-1], 2),
                "target": group[0]["target"],
                "target_met": f"{sum(judged)}/{len(judged)}" if judged else None,
            }
        )
    return out


@dataclass(frozen=True, slots=True)
class RunInfo:
    """Which run a summary is of, apart from what happened in it."""

    seed: int
    #: Seconds of faults planned.
    duration: float
    #: Seconds the whole run took, setup and checks included.
    elapsed: float
    #: The command line that runs it again.
    replay: str


def summarize(
    run: RunInfo,
    *,
    history: Sequence[Operation],
    records: Sequence[FaultRecord],
    result: Result,
    errors: Mapping[str, int],
    gaps: Sequence[Mapping[str, Any]],
    notes: Sequence[str],
) -> dict[str, Any]:
    """Every figure of the run, JSON-ready."""
    by_outcome = Counter(op.status for op in history)
    by_kind: dict[str, dict[str, int]] = {}
    for op in history:
        row = by_kind.setdefault(op.kind, {"ok": 0, "fail": 0, "unknown": 0})
        row[op.status] += 1
    faults = Counter(r.kind for r in records)
    latencies = sorted(
        op.complete - op.invoke for op in history if op.status == "ok" and op.complete is not None
    )
    return {
        "seed": run.seed,
        "duration": run.duration,
        "elapsed": round(run.elapsed, 1),
        "replay": run.replay,
        "verdict": result.verdict,
        "operations": {
            "total": len(history),
            "ok": by_outcome["ok"],
            "fail": by_outcome["fail"],
            "unknown": by_outcome["unknown"],
            "by_kind": by_kind,
            "latency_ms": _percentiles(latencies),
            "errors": dict(sorted(errors.items())),
        },
        "faults": {"total": len(records), "by_kind": dict(sorted(faults.items()))},
        "fault_log": [r.as_dict() for r in records],
        "availability_by_kind": availability_by_kind(gaps),
        "availability": list(gaps),
        "checks": as_mapping(result)["checks"],
        "violations": result.violations,
        "notes": list(notes),
    }


def _percentiles(sorted_values: Sequence[float]) -> dict[str, float]:
    if not sorted_values:
        return {}
    out = {}
    for name, q in (("p50", 0.5), ("p99", 0.99), ("max", 1.0)):
        index = min(len(sorted_values) - 1, int(q * len(sorted_values)))
        out[name] = round(sorted_values[index] * 1000, 1)
    return out


def format_table(summary: Mapping[str, Any]) -> str:
    """The human-readable summary printed at the end of a run."""
    ops = summary["operations"]
    lines = [
        f"chaos run: seed {summary['seed']}, {summary['duration']:g} s of faults "
        f"({summary['elapsed']:g} s in all)",
        "",
        "operations   ok      fail    unknown",
    ]
    for kind, row in sorted(ops["by_kind"].items()):
        lines.append(f"  {kind:<10} {row['ok']:<7} {row['fail']:<7} {row['unknown']}")
    lines.append(f"  {'total':<10} {ops['ok']:<7} {ops['fail']:<7} {ops['unknown']}")
    lat = ops["latency_ms"]
    if lat:
        lines.append(
            f"  latency of ok ops (ms): p50 {lat['p50']}, p99 {lat['p99']}, max {lat['max']}"
        )
    lines += ["", "faults by kind"]
    for kind, count in summary["faults"]["by_kind"].items():
        lines.append(f"  {kind:<20} {count}")
    lines += [
        "",
        "availability by kind (longest gap with no successful write, seconds)",
        "  kind                          n   during: median  max   after heal: median  max   goal",
    ]
    for row in summary["availability_by_kind"]:
        goal = "-" if row["target"] is None else f"<={row['target']:g} met {row['target_met']}"
        lines.append(
            f"  {row['kind']:<28} {row['faults']:>3}   {row['gap_during_median']:>14.2f}"
            f"  {row['gap_during_max']:>4.2f}   {row['gap_after_heal_median']:>17.2f}"
            f"  {row['gap_after_heal_max']:>4.2f}   {goal}"
        )
    rows = summary["availability"]
    shown = (
        rows
        if len(rows) <= MAX_FAULT_ROWS
        else sorted(rows, key=lambda r: -r["gap_during"])[:MAX_FAULT_ROWS]
    )
    title = "each fault" if shown is rows else f"the {len(shown)} worst of {len(rows)} faults"
    lines += ["", f"{title} (all in summary.json)"]
    lines.append("  #    kind                 target(s)                  during  after heal  goal")
    for row in sorted(shown, key=lambda r: int(r["index"])):
        who = _short(row["targets"])
        if row["hit_leader"]:
            who += " (leader)"
        goal = "-" if row["target"] is None else f"<={row['target']:g} {_met(row['target_met'])}"
        lines.append(
            f"  {row['index']:<4} {row['kind']:<20} {who[:26]:<26} {row['gap_during']:>6.2f}"
            f"  {row['gap_after_heal']:>10.2f}  {goal}"
        )
    broken = summary.get("broken_acceptor")
    if broken:
        lines += [
            "",
            f"TEST ONLY: {', '.join(broken['acceptors'])} ran deliberately broken "
            f"({broken['mode']}): this run should find a violation",
        ]
    lines += ["", "checks"]
    for check in summary["checks"]:
        lines.append(f"  {check['name']:<13} {check['status'].upper():<12} {check['detail']}")
        for problem in check["problems"][:5]:
            lines.append(f"      {problem}")
    violations = summary["violations"]
    lines += ["", f"violations: {len(violations)}", f"verdict: {summary['verdict'].upper()}"]
    lines.append(f"seed {summary['seed']}; replay with: {summary['replay']}")
    return "\n".join(lines)


def _short(names: Sequence[str]) -> str:
    """acceptor-1, proposer-0 -> a1,p0 (all of them: "all")."""
    if len(names) >= 8:
        return "all"
    return ",".join(n[0] + n.rsplit("-", 1)[-1] for n in names)


def _met(met: bool | None) -> str:
    return "met" if met else "MISSED"


def write_json(summary: Mapping[str, Any], path: Path) -> None:
    path.write_text(json.dumps(summary, indent=2, sort_keys=False) + "\n")
