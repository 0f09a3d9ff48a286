"""The timeline PNG: operations (latency over time, by outcome) and fault windows.

Drawn with matplotlib, which the dev install (`make install`) brings. The package
itself does not depend on it: without it the run skips the picture and says so.
"""

from __future__ import annotations

import importlib
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from paxos_testing.chaos.schedule import FAULT_KINDS, FaultRecord
from paxos_testing.linearizability import Operation

_COLOURS = {"ok": "#2a9d8f", "fail": "#e76f51", "unknown": "#9b5de5"}


def write_timeline(
    path: Path, history: Sequence[Operation], records: Sequence[FaultRecord], end: float
) -> str | None:
    """Write the PNG; return None, or a note saying why it was skipped."""
    try:
        matplotlib: Any = importlib.import_module("matplotlib")
    except ImportError:
        return "timeline.png skipped: matplotlib is not installed (pip install matplotlib)"
    matplotlib.use("Agg")
    plt: Any = importlib.import_module("matplotlib.pyplot")
    fig, (ax_faults, ax_ops) = plt.subplots(
        2, 1, figsize=(14, 6), sharex=True, gridspec_kw={"height_ratios": [1, 3]}
    )
    cmap = plt.get_cmap("tab10")
    rows = {kind: i for i, kind in enumerate(FAULT_KINDS)}
    for r in records:
        if r.started is None or r.healed is None:
            continue
        row = rows.get(r.kind, 0)
        colour = cmap(row % 10)
        ax_faults.broken_barh([(r.started, r.healed - r.started)], (row - 0.4, 0.8), color=colour)
        ax_ops.axvspan(r.started, r.healed, color=colour, alpha=0.12)
    ax_faults.set_yticks(range(len(FAULT_KINDS)), FAULT_KINDS, fontsize=7)
    ax_faults.set_title("fault windows")
    for status, colour in _COLOURS.items():
        xs = [op.invoke for op in history if op.status == status]
        if status == "ok":
            ys = [
                1000 * (op.complete - op.invoke)
                for op in history
                if op.status == status and op.complete is not None
            ]
        else:
            ys = [1000 * 3.0 for _ in xs]
        ax_ops.scatter(xs, ys, s=3, color=colour, label=status, alpha=0.6, linewidths=0)
    ax_ops.set_yscale("log")
    ax_ops.set_ylabel("latency (ms); fail/unknown at top")
    ax_ops.set_xlabel("seconds since the load started")
    ax_ops.set_xlim(0, max(end, 1.0))
    ax_ops.legend(loc="upper right", markerscale=4)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return None
