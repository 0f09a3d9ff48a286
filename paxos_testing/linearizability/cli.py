"""The command line: ``python -m paxos_testing.linearizability HISTORY.jsonl``
checks a saved history. Exit status 0 means linearizable, 1 not linearizable,
2 unknown (the search budget ran out, or the file could not be read)."""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

from paxos_testing.linearizability.checker import DEFAULT_TIMEOUT_SECONDS, check_history
from paxos_testing.linearizability.history import HistoryError
from paxos_testing.linearizability.jsonl import history_from_jsonl


def main(argv: Sequence[str] | None = None) -> int:
    """Check a JSONL history file; exit status 0 linearizable, 1 not, 2 unknown."""
    parser = argparse.ArgumentParser(
        prog="python -m paxos_testing.linearizability",
        description="Check that a recorded key-value history is linearizable.",
    )
    parser.add_argument("history", help="JSONL history file (one operation per line)")
    parser.add_argument(
        "--timeout",
        type=float,
        default=DEFAULT_TIMEOUT_SECONDS,
        help="search budget in seconds (default: %(default)s)",
    )
    args = parser.parse_args(argv)
    try:
        ops = history_from_jsonl(args.history)
    except (OSError, HistoryError) as exc:
        print(f"error: cannot read history: {exc}", file=sys.stderr)
        return 2
    result = check_history(ops, timeout_seconds=args.timeout)
    print(result.explanation)
    if result.linearizable:
        return 0
    return 2 if result.timed_out else 1
