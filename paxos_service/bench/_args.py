"""The command line of ``paxos bench``: its options, and the bounds that keep
any invocation finite."""

from __future__ import annotations

import argparse
from collections.abc import Callable
from pathlib import Path
from typing import Any

OPS = ("put", "get")
DEFAULT_LEVELS = (1, 16, 64, 256)
#: Bounds that keep any invocation finite.
MAX_LEVEL = 4096
MAX_LEVELS = 12
MAX_DURATION = 3600.0


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
