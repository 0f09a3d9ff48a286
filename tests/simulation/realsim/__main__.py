"""``python -m tests.simulation.realsim``: many seeds of the simulation of the
real code, on every core, with progress; ``make sim`` runs it.

    python -m tests.simulation.realsim --seeds 10000 [--first 0] [--jobs 2]
    python -m tests.simulation.realsim --seed 1234        # replay one, with its report
    python -m tests.simulation.realsim --seeds 300 --broken stale-floor   # must fail

Exit 0 when every seed holds, 1 when any seed found a violation.
"""

from __future__ import annotations

import argparse
import functools
import multiprocessing
import os
import sys
import time
from collections import Counter

from tests.simulation.realsim.broken import MODES, broken
from tests.simulation.realsim.run import RunResult, run_seed


def _one(mode: str | None, seed: int) -> RunResult:
    with broken(mode):
        return run_seed(seed)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m tests.simulation.realsim")
    parser.add_argument("--seeds", type=int, default=300, help="how many seeds (default 300)")
    parser.add_argument("--first", type=int, default=0, help="first seed (default 0)")
    parser.add_argument("--seed", type=int, help="run this one seed and print its report")
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1)
    parser.add_argument("--broken", choices=MODES, help="put a fixed bug back (must fail)")
    parser.add_argument("--stop-on-failure", action="store_true")
    args = parser.parse_args(argv)

    if args.seed is not None:
        with broken(args.broken):
            result = run_seed(args.seed)
        print(result.report())
        print(
            f"ops {result.ops} (ok {result.ok}), votes {result.votes}, "
            f"instances applied {result.applied_instances}"
        )
        print("VIOLATION" if result.failed else "ok")
        return 1 if result.failed else 0

    seeds = range(args.first, args.first + args.seeds)
    started = time.perf_counter()
    failed: list[RunResult] = []
    kinds: Counter[str] = Counter()
    done = 0
    ctx = multiprocessing.get_context("fork")
    with ctx.Pool(args.jobs) as pool:
        run = functools.partial(_one, args.broken)
        for result in pool.imap_unordered(run, seeds, chunksize=4):
            done += 1
            if result.failed:
                failed.append(result)
                kinds.update(k for k, v in result.violations.items() if v)
                print(result.report(), flush=True)
                if args.stop_on_failure:
                    pool.terminate()
                    break
            if done % 100 == 0 or done == len(seeds):
                rate = done / (time.perf_counter() - started)
                print(
                    f"{done}/{len(seeds)} seeds, {len(failed)} failed, {rate:.1f} seeds/s",
                    flush=True,
                )
    elapsed = time.perf_counter() - started
    print(
        f"simulation: {done} seeds from {args.first} in {elapsed:.0f} s, "
        f"{len(failed)} with violations"
        + (f" ({dict(kinds)}); first failing seed {min(r.seed for r in failed)}" if failed else "")
        + (f" [broken: {args.broken}]" if args.broken else "")
    )
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
