"""``paxos status`` and ``paxos explain``: the operator's view of a cluster.

    paxos status  [--acceptors A,..] [--proposers P,..] [--learners L,..]
                  [--watch [SECONDS]] [--timeout S] [--json] [--tls-*]
    paxos explain INSTANCE [--log] [--proposers P,..] [--learners L,..] [--timeout S]
                  [--value-limit BYTES] [--json] [--tls-*]

``status`` asks every node at once for its health and ``GetNodeStatus`` and
prints one row per node: role, id, address, health, leader, log positions and
learner lag. Addresses default to those of ``paxos cluster`` run with its
defaults, or come from ``PAXOS_ACCEPTORS``/``PAXOS_PROPOSERS``/``PAXOS_LEARNERS``.
Nodes are asked in parallel with a short deadline each, so one dead or
blackholed node costs ``--timeout`` seconds, not one per node.

``explain`` asks a proposer (or, if none answers, a learner) to explain one
instance (``OperatorService/ExplainInstance``) and prints the verdict with
every acceptor's and learner's state.

Exit status: ``status`` exits 0 when every node is SERVING, 1 when any is
DOWN, NOT_SERVING or not the role it is listed as; ``explain`` exits 0 with
an explanation whatever the verdict, 1 if no proposer or learner answered.
Both exit 2 on a usage error and 130 on Ctrl-C (``--watch`` ends that way).
An error is one line ``paxos: error: ...`` (argparse's usage line before it
for usage errors), never a traceback. The gRPC side lives in
:mod:`paxos_service.client.operator`, imported only when a command runs.
"""

from __future__ import annotations

import argparse
import asyncio
import os
import sys
import time
from collections.abc import Callable
from typing import NoReturn

from paxos_service.cli.options import add_tls_options, tls_from_args
from paxos_service.core.config import (
    MAX_INSTANCE,
    ConfigError,
    TlsFiles,
    argparse_type,
    parse_address_list,
    parse_positive_float,
)

EXIT_OK = 0
EXIT_UNHEALTHY = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130
#: What a shell reports for a process killed by SIGPIPE: our reader went away.
EXIT_BROKEN_PIPE = 141

#: Where `paxos cluster` (and so `make run`) puts its nodes with its defaults.
LOCAL_ACCEPTORS = "127.0.0.1:50051,127.0.0.1:50052,127.0.0.1:50053"
LOCAL_PROPOSERS = "127.0.0.1:50054,127.0.0.1:50055"
LOCAL_LEARNERS = "127.0.0.1:50056"
DEFAULT_TIMEOUT = 2.0
DEFAULT_WATCH = 2.0


def _instance(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"instance must be an integer, got {text!r}") from None
    if not 1 <= value <= MAX_INSTANCE:
        raise ConfigError(f"instance must be in 1..{MAX_INSTANCE}, got {value}")
    return value


def _value_limit(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise ConfigError(f"expected a number of bytes, got {text!r}") from None
    if not 1 <= value <= 2**32 - 1:
        raise ConfigError(f"must be in 1..{2**32 - 1}, got {value}")
    return value


_addresses = argparse_type(parse_address_list, "addresses")
_seconds = argparse_type(lambda t: parse_positive_float(t, "seconds"), "seconds")


def _add_address_options(parser: argparse.ArgumentParser, *roles: str) -> None:
    defaults = {"acceptors": LOCAL_ACCEPTORS, "proposers": LOCAL_PROPOSERS}
    defaults["learners"] = LOCAL_LEARNERS
    for role in roles:
        env = "PAXOS_" + role.upper()
        parser.add_argument(
            f"--{role}",
            type=_addresses,
            default=os.environ.get(env) or defaults[role],
            metavar="HOST:PORT,...",
            help=f"{role[:-1]} addresses, comma-separated, in id order (default: those of "
            f"`paxos cluster`, {defaults[role]}) [env {env}]",
        )


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``status`` and ``explain`` under the ``paxos`` subcommands."""
    status = sub.add_parser(
        "status",
        help="a table of every node: role, health, leader, log positions, lag",
        description="Ask every node for its health and status at once and print one row "
        "per node. Exit 0 if every node is SERVING, 1 if any is DOWN, NOT_SERVING or not "
        "the role it is listed as. See docs/operations.md.",
    )
    _add_address_options(status, "acceptors", "proposers", "learners")
    status.add_argument(
        "--watch",
        type=_seconds,
        nargs="?",
        const=DEFAULT_WATCH,
        metavar="SECONDS",
        help=f"redraw every SECONDS (default {DEFAULT_WATCH:g}) until Ctrl-C",
    )
    status.add_argument(
        "--timeout",
        type=_seconds,
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds to wait for each node (default {DEFAULT_TIMEOUT:g}); "
        "one that does not answer in time is DOWN",
    )
    status.add_argument(
        "--json", action="store_true", help="print JSON (with --watch: one object per line)"
    )
    add_tls_options(status, server=False)

    explain = sub.add_parser(
        "explain",
        help="why an instance is (or is not) chosen: every acceptor's and learner's view",
        description="Ask a proposer (or, if none answers, a learner) to explain INSTANCE: "
        "each acceptor's promised and accepted ballot and value, what the learners know, "
        "and a verdict (chosen, stuck, no acceptor accepted anything, unknown). Exit 0 "
        "with an explanation, 1 if no proposer or learner answered. See docs/operations.md.",
    )
    explain.add_argument("instance", type=argparse_type(_instance, "instance"), metavar="INSTANCE")
    explain.add_argument(
        "--log",
        action="store_true",
        help="the replicated log's INSTANCE (default: the single-decree instance that "
        "`paxos propose` and Propose decide; the two are separate)",
    )
    _add_address_options(explain, "proposers", "learners")
    explain.add_argument(
        "--timeout",
        type=_seconds,
        default=5.0,
        metavar="S",
        help="seconds to wait for an answer (default 5)",
    )
    explain.add_argument(
        "--value-limit",
        type=argparse_type(_value_limit, "bytes"),
        default=0,
        metavar="BYTES",
        help="show at most this many bytes of each value (default: the server's, 4096)",
    )
    explain.add_argument("--json", action="store_true", help="print the answer as JSON")
    add_tls_options(explain, server=False)


def _fail(message: str, code: int = EXIT_UNHEALTHY) -> NoReturn:
    print(f"paxos: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _tls(args: argparse.Namespace) -> TlsFiles | None:
    """The client's TLS files, checked now (readable, a certificate that
    matches its key, valid today) so that a mistake is one usage error rather
    than every node DOWN."""
    from paxos_service.transport import tls

    try:
        files = tls_from_args(args, server=False)
        if files is not None:
            tls.load(files, server=False)
    except ConfigError as exc:
        _fail(str(exc), EXIT_USAGE)
    return files


def _guarded(run: Callable[[], int]) -> int:
    try:
        return run()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output has gone (`paxos status | head -1`). Point
        # stdout at /dev/null so the interpreter's final flush does not complain.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


def run_status(args: argparse.Namespace) -> int:
    from paxos_service.client import operator as oc

    files = _tls(args)
    nodes = [
        (role, i, address)
        for role in ("acceptor", "proposer", "learner")
        for i, address in enumerate(getattr(args, role + "s"))
    ]

    def show(reports: list[oc.NodeReport]) -> None:
        if args.json:
            print(oc.render_json(reports), flush=True)
            return
        if args.watch is not None:
            if sys.stdout.isatty():
                print("\x1b[H\x1b[2J", end="")
            stamp = time.strftime("%Y-%m-%d %H:%M:%S")
            print(f"paxos status every {args.watch:g}s, Ctrl-C stops ({stamp})\n")
        print(oc.render_table(reports), flush=True)

    async def watch() -> int:
        while True:
            reports = await oc.probe_all(nodes, files, args.timeout)
            show(reports)
            if args.watch is None:
                return EXIT_OK if all(r.ok for r in reports) else EXIT_UNHEALTHY
            await asyncio.sleep(args.watch)

    return _guarded(lambda: asyncio.run(watch()))


def run_explain(args: argparse.Namespace) -> int:
    from paxos_service.client import operator as oc

    files = _tls(args)
    # Proposers first: they also know the learners; then learners, in case
    # no proposer is up.
    addresses = [*args.proposers, *(a for a in args.learners if a not in args.proposers)]

    def run() -> int:
        try:
            answer, address = oc.explain(
                args.instance, addresses, files, args.timeout, args.value_limit, log=args.log
            )
        except ValueError as exc:
            _fail(str(exc), EXIT_USAGE)
        except LookupError as exc:
            _fail(f"no proposer or learner answered: {exc}")
        if args.json:
            print(oc.explanation_json(answer, address))
        else:
            print(oc.render_explanation(answer, address))
        return EXIT_OK

    return _guarded(run)
