"""``python -m paxos_testing.chaos``: a chaos run from the command line.

Exit status: 0 every check held; 1 a violation was found; 2 the run could not
be made (not root, a tool missing, the cluster never came up, bad flags);
3 inconclusive (the linearizability search ran out of budget); 130 Ctrl-C.
"""

from __future__ import annotations

import argparse
import random
import re
import shlex
import sys
import time
from collections.abc import Sequence
from pathlib import Path

from paxos_testing.chaos.host import HarnessError, NotRootError
from paxos_testing.chaos.nodes import BROKEN_ACCEPTOR_MODES as BROKEN_MODES
from paxos_testing.chaos.nodes import BROKEN_ACCEPTOR_MODULE
from paxos_testing.chaos.run import RunConfig, run_chaos
from paxos_testing.chaos.schedule import FAULT_KINDS

EXIT_PASS = 0
EXIT_VIOLATION = 1
EXIT_CANNOT_RUN = 2
EXIT_INCONCLUSIVE = 3

_UNITS = {"": 1.0, "s": 1.0, "m": 60.0, "h": 3600.0}


def parse_duration(text: str) -> float:
    """``90``, ``90s``, ``30m``, ``1h``, ``1.5m`` -> seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([smh]?)\s*", text)
    if not match:
        raise argparse.ArgumentTypeError(f"expected a duration like 60s or 30m, got {text!r}")
    seconds = float(match.group(1)) * _UNITS[match.group(2)]
    if seconds <= 0:
        raise argparse.ArgumentTypeError("the duration must be positive")
    return seconds


#: The learners snapshot every 64 KiB of log in a chaos run: dozens of times
#: a minute under its load, so the acceptors truncate all along.
RETAIN_LOG_BYTES = 64 * 1024


def parse_range(text: str) -> tuple[float, float]:
    """``3-5`` -> (3.0, 5.0) seconds."""
    match = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*-\s*(\d+(?:\.\d+)?)\s*", text)
    if not match or float(match.group(1)) > float(match.group(2)) or float(match.group(1)) <= 0:
        raise argparse.ArgumentTypeError(f"expected LOW-HIGH seconds like 3-5, got {text!r}")
    return float(match.group(1)), float(match.group(2))


def parse_kinds(text: str) -> tuple[str, ...]:
    kinds = tuple(k.strip() for k in text.split(",") if k.strip())
    bad = [k for k in kinds if k not in FAULT_KINDS]
    if bad or not kinds:
        raise argparse.ArgumentTypeError(f"unknown fault kinds {bad}; choose from {FAULT_KINDS}")
    return kinds


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m paxos_testing.chaos",
        description="Run the cluster in network namespaces under a seeded nemesis, check the "
        "clients' histories and the replicas' states, and report. Needs root.",
    )
    p.add_argument("--duration", type=parse_duration, default=60.0, help="e.g. 60s, 30m")
    p.add_argument("--seed", type=int, default=None, help="default: random (printed)")
    p.add_argument("--out", type=Path, default=None, help="default: data/chaos/<time>-seed<N>")
    p.add_argument("--clients", type=int, default=4)
    p.add_argument("--keys", type=int, default=4)
    p.add_argument("--op-timeout", type=float, default=3.0, help="client deadline per operation")
    p.add_argument("--fault-seconds", type=parse_range, default=(3.0, 5.0), metavar="LOW-HIGH")
    p.add_argument("--heal-seconds", type=parse_range, default=(3.0, 5.0), metavar="LOW-HIGH")
    p.add_argument(
        "--kinds",
        type=parse_kinds,
        default=FAULT_KINDS,
        help="comma-separated fault kinds (default: all of " + ",".join(FAULT_KINDS) + ")",
    )
    p.add_argument("--check-budget", type=float, default=300.0, help="linearizability budget, s")
    p.add_argument(
        "--retain-log-bytes",
        type=int,
        default=RETAIN_LOG_BYTES,
        metavar="BYTES",
        help="the learners' --retain-log-bytes: small, so that snapshots, the compaction "
        f"point and the acceptors' truncation all run under load (default {RETAIN_LOG_BYTES})",
    )
    p.add_argument("--quiet", action="store_true", help="no progress lines")
    p.add_argument(
        "--broken-acceptor",
        choices=BROKEN_MODES,
        default=None,
        metavar="MODE",
        help="TEST ONLY: run acceptors deliberately broken (started as "
        f"`python -m {BROKEN_ACCEPTOR_MODULE} --mode MODE ...`; modes: "
        f"{', '.join(BROKEN_MODES)}) to prove the checkers catch it: such a run should exit 1",
    )
    p.add_argument(
        "--broken-acceptors",
        type=int,
        choices=(1, 2, 3),
        default=None,
        metavar="N",
        help="with --broken-acceptor: break only the first N acceptors (default: all 3)",
    )
    return p


def replay_command(args: argparse.Namespace, seed: int) -> str:
    argv = ["python", "-m", "paxos_testing.chaos", "--duration", f"{args.duration:g}s"]
    argv += ["--seed", str(seed)]
    defaults = build_parser().parse_args([])
    flags = (
        "clients",
        "keys",
        "op_timeout",
        "fault_seconds",
        "heal_seconds",
        "kinds",
        "retain_log_bytes",
    )
    for flag in (*flags, "broken_acceptor", "broken_acceptors"):
        value = getattr(args, flag)
        if value != getattr(defaults, flag):
            if isinstance(value, tuple) and value and isinstance(value[0], float):
                text = f"{value[0]:g}-{value[1]:g}"
            elif isinstance(value, tuple):
                text = ",".join(value)
            else:
                text = f"{value:g}" if isinstance(value, float) else str(value)
            argv += [f"--{flag.replace('_', '-')}", text]
    return shlex.join(argv)


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.broken_acceptors is not None and args.broken_acceptor is None:
        parser.error("--broken-acceptors needs --broken-acceptor MODE")
    seed = args.seed if args.seed is not None else random.SystemRandom().randrange(1, 10**6)
    out = args.out or Path("data") / "chaos" / f"{time.strftime('%Y%m%d-%H%M%S')}-seed{seed}"
    replay = replay_command(args, seed)
    print(f"chaos: seed {seed}, duration {args.duration:g}s, output in {out}", flush=True)
    config = RunConfig(
        seed=seed,
        duration=args.duration,
        out=out.resolve(),
        clients=args.clients,
        keys=args.keys,
        op_timeout=args.op_timeout,
        fault_seconds=args.fault_seconds,
        heal_seconds=args.heal_seconds,
        kinds=args.kinds,
        retain_log_bytes=args.retain_log_bytes,
        linearizability_budget=args.check_budget,
        replay=replay,
        progress=not args.quiet,
        broken_acceptor=args.broken_acceptor,
        broken_acceptors=args.broken_acceptors,
    )
    try:
        outcome = run_chaos(config)
    except NotRootError as exc:
        print(f"chaos: cannot run: {exc}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except HarnessError as exc:
        print(
            f"chaos: the harness failed (not a finding about the cluster): {exc}", file=sys.stderr
        )
        print(f"chaos: seed {seed}; replay with: {replay}", file=sys.stderr)
        return EXIT_CANNOT_RUN
    except KeyboardInterrupt:
        print(
            f"\nchaos: interrupted; cleaned up. seed {seed}; replay with: {replay}", file=sys.stderr
        )
        return 130
    print()
    print(outcome.table)
    for note in outcome.summary["notes"]:
        print(f"note: {note}")
    print(f"report: {out / 'summary.json'}, history: {out / 'history.jsonl'}, logs: {out / 'logs'}")
    if outcome.result.verdict == "violation":
        return EXIT_VIOLATION
    if outcome.result.verdict == "inconclusive":
        return EXIT_INCONCLUSIVE
    return EXIT_PASS
