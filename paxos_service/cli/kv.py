"""``paxos kv``: the replicated key-value store from the shell.

    paxos kv [--learners HOST:PORT,...] [--timeout S] [--tls-ca F --tls-cert F --tls-key F]
             put KEY VALUE
    paxos kv get KEY [--stale]
    paxos kv del KEY
    paxos kv cas KEY VALUE (--expect-value V | --expect-version N)
    paxos kv range PREFIX [--limit N] [--stale]
    paxos kv watch KEY [--prefix] [--from-revision N] [--count N]
    paxos kv outcome CLIENT_ID SEQUENCE
    paxos kv compact REVISION

``--learners`` falls back to ``PAXOS_LEARNERS``; ``--tls-*`` to ``PAXOS_TLS_*``
(all three or none: a client certificate signed by the cluster CA). Values are taken as given
(UTF-8 text, or whatever bytes the shell passed) and printed as UTF-8 text; a
value that is not UTF-8 text is printed as ``base64:...``, and so is, in the
line-per-key output of ``range`` and ``watch``, a value containing a line
break, so that one key is always one line.

Exit status: 0 on success; 1 when the answer is "no" (key not found, not
swapped, not applied) or on an error, with one line ``paxos: error: ...`` on
stderr and never a traceback; 2 for usage errors (from argparse); 130 on
Ctrl-C. Everything a command reports as its result goes to stdout, so
``paxos kv get KEY > file`` captures just the value.
"""

from __future__ import annotations

import argparse
import base64
import os
import sys
from collections.abc import Callable
from typing import TYPE_CHECKING, NoReturn

from paxos_service.cli.options import add_tls_options, tls_from_args
from paxos_service.core.config import (
    ConfigError,
    argparse_type,
    parse_address_list,
    parse_positive_float,
)

if TYPE_CHECKING:
    from paxos_service.client.kv import KeyValue, KvClient, WatchEvent

EXIT_OK = 0
EXIT_NO = 1
EXIT_INTERRUPTED = 130
#: What a shell reports for a process killed by SIGPIPE: our reader went away.
EXIT_BROKEN_PIPE = 141
DEFAULT_TIMEOUT = 5.0


def _integer(minimum: int, maximum: int) -> Callable[[str], int]:
    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
        if not minimum <= value <= maximum:
            raise ConfigError(f"must be in {minimum}..{maximum}, got {value}")
        return value

    return argparse_type(parse, "integer")


#: Where `paxos cluster` (and so `make run`) puts its learner by default.
LOCAL_CLUSTER_LEARNER = "127.0.0.1:50056"


def add_parser(
    sub: argparse._SubParsersAction[argparse.ArgumentParser],
) -> argparse.ArgumentParser:
    """Register ``kv`` and its operations under the ``paxos`` subcommands."""
    kv = sub.add_parser(
        "kv",
        help="use the replicated key-value store",
        description="Read, write and watch the replicated key-value store served by the "
        "learners. Writes and reads are linearizable (through the log) unless --stale.",
    )
    kv.add_argument(
        "--learners",
        type=argparse_type(parse_address_list, "addresses"),
        default=os.environ.get("PAXOS_LEARNERS") or LOCAL_CLUSTER_LEARNER,
        metavar="HOST:PORT,...",
        help="comma-separated learner addresses; tried in turn (default: the learner of "
        f"`paxos cluster`, {LOCAL_CLUSTER_LEARNER}) [env PAXOS_LEARNERS]",
    )
    kv.add_argument(
        "--timeout",
        type=argparse_type(lambda t: parse_positive_float(t, "timeout"), "seconds"),
        default=DEFAULT_TIMEOUT,
        metavar="S",
        help=f"seconds a command may take, retries included (default {DEFAULT_TIMEOUT:g})",
    )
    add_tls_options(kv, server=False)
    ops = kv.add_subparsers(dest="kv_command", required=True, metavar="OPERATION")

    put = ops.add_parser("put", help="set KEY to VALUE; prints the revision")
    put.add_argument("key", metavar="KEY")
    put.add_argument("value", metavar="VALUE")

    get = ops.add_parser("get", help="print KEY's value (exit 1 if absent)")
    get.add_argument("key", metavar="KEY")
    get.add_argument(
        "--stale",
        action="store_true",
        help="read this learner's copy without going through the log (may be behind)",
    )

    delete = ops.add_parser("del", help="delete KEY")
    delete.add_argument("key", metavar="KEY")

    cas = ops.add_parser(
        "cas", help="set KEY to VALUE only if it has the expected value or version"
    )
    cas.add_argument("key", metavar="KEY")
    cas.add_argument("value", metavar="VALUE")
    expect = cas.add_mutually_exclusive_group(required=True)
    expect.add_argument("--expect-value", metavar="V", help="swap only if the value is V")
    expect.add_argument(
        "--expect-version",
        metavar="N",
        type=_integer(0, (1 << 64) - 1),
        help="swap only if the key's version is N (0: only if the key is absent)",
    )

    range_ = ops.add_parser("range", help="print 'KEY VALUE' for every key under PREFIX")
    range_.add_argument("prefix", metavar="PREFIX", help="key prefix ('' for every key)")
    range_.add_argument(
        "--limit", type=_integer(0, (1 << 32) - 1), default=0, help="at most N keys"
    )
    range_.add_argument("--stale", action="store_true", help="read without the log")

    watch = ops.add_parser("watch", help="print changes to KEY (or a prefix) as they happen")
    watch.add_argument("key", metavar="KEY")
    watch.add_argument("--prefix", action="store_true", help="watch every key starting with KEY")
    watch.add_argument(
        "--from-revision",
        type=_integer(0, (1 << 64) - 1),
        default=0,
        metavar="N",
        help="first replay every change since revision N (default: only new changes)",
    )
    watch.add_argument(
        "--count", type=_integer(1, 1 << 62), default=None, metavar="N", help="exit after N events"
    )

    compact = ops.add_parser(
        "compact",
        help="discard watch history through REVISION on every learner (keys and values stay)",
    )
    compact.add_argument("revision", metavar="REVISION", type=_integer(1, (1 << 63) - 1))

    outcome = ops.add_parser(
        "outcome", help="say whether request (CLIENT_ID, SEQUENCE) was applied"
    )
    outcome.add_argument("client_id", metavar="CLIENT_ID", type=_integer(1, (1 << 64) - 1))
    outcome.add_argument("sequence", metavar="SEQUENCE", type=_integer(1, (1 << 64) - 1))
    return kv


def run(args: argparse.Namespace, parser: argparse.ArgumentParser) -> int:
    """Run ``paxos kv ...`` with parsed ``args``; return the exit status."""
    from paxos_service.client.kv import KvClient
    from paxos_service.core.errors import PaxosError

    if args.learners is None:
        parser.error("--learners is required (or set PAXOS_LEARNERS)")
    tls = tls_from_args(args, server=False)  # a ConfigError is a usage error (exit 2)
    try:
        with KvClient(args.learners, timeout=args.timeout, tls=tls) as client:
            return _OPERATIONS[args.kv_command](client, args)
    except PaxosError as exc:
        _fail(str(exc))
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        # Whoever read our output has gone (`... | head -1`). Point stdout at
        # /dev/null so the interpreter's final flush does not complain too.
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return EXIT_BROKEN_PIPE


# Operations -----------------------------------------------------------------------


def _put(client: KvClient, args: argparse.Namespace) -> int:
    result = client.put(args.key, _value_arg(args.value))
    print(f"revision {result.revision}")
    return EXIT_OK


def _get(client: KvClient, args: argparse.Namespace) -> int:
    result = client.get_detailed(args.key, stale=args.stale)
    if args.stale:
        print(
            f"paxos: note: stale read from a learner that has applied instance "
            f"{result.applied_instance}, {result.lag_instances} decided instance(s) behind",
            file=sys.stderr,
        )
    if result.kv is None:
        _fail(f"key not found: {args.key}")
    print(show_value(result.kv.value))
    return EXIT_OK


def _delete(client: KvClient, args: argparse.Namespace) -> int:
    # Deleting an absent key is not an error: the key is gone either way,
    # which makes `del` safe to repeat in scripts.
    result = client.delete(args.key)
    if result.deleted:
        print(f"deleted (revision {result.revision})")
    else:
        print("not found (nothing deleted)")
    return EXIT_OK


def _cas(client: KvClient, args: argparse.Namespace) -> int:
    expected_value = None if args.expect_value is None else _value_arg(args.expect_value)
    result = client.cas(
        args.key,
        _value_arg(args.value),
        expected_value=expected_value,
        expected_version=args.expect_version,
    )
    if result.succeeded:
        print(f"swapped (revision {result.revision})")
        return EXIT_OK
    if result.current is None:
        _fail(f"not swapped: key {args.key} is absent")
    current = result.current
    _fail(f"not swapped: current value {_show_inline(current.value)} version {current.version}")


def _range(client: KvClient, args: argparse.Namespace) -> int:
    for kv in client.range(args.prefix, limit=args.limit, stale=args.stale):
        print(format_kv(kv))
    return EXIT_OK


def _watch(client: KvClient, args: argparse.Namespace) -> int:
    seen = 0
    with client.watch(args.key, prefix=args.prefix, start_revision=args.from_revision) as events:
        for event in events:
            print(format_event(event), flush=True)
            seen += 1
            if seen == args.count:
                break
    return EXIT_OK


def _compact(client: KvClient, args: argparse.Namespace) -> int:
    revision = client.compact(args.revision)
    print(f"compacted through revision {args.revision} (store at revision {revision})")
    return EXIT_OK


def _outcome(client: KvClient, args: argparse.Namespace) -> int:
    outcome = client.outcome(args.client_id, args.sequence)
    if outcome is None:
        print("not applied")
        return EXIT_NO
    print(f"applied (revision {outcome.revision})")
    return EXIT_OK


_OPERATIONS: dict[str, Callable[[KvClient, argparse.Namespace], int]] = {
    "put": _put,
    "get": _get,
    "del": _delete,
    "cas": _cas,
    "range": _range,
    "watch": _watch,
    "outcome": _outcome,
    "compact": _compact,
}


# Formatting -------------------------------------------------------------------------


def show_value(value: bytes) -> str:
    """A value as text: UTF-8 if it is, else ``base64:`` and its base64."""
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()


def _show_inline(value: bytes) -> str:
    """Like :func:`show_value`, but a value with a line break is base64 too,
    so that line-per-key output stays one line per key."""
    text = show_value(value)
    if "\n" in text or "\r" in text:
        return "base64:" + base64.b64encode(value).decode()
    return text


def format_event(event: WatchEvent) -> str:
    if event.type == "delete":
        return f"DELETE {event.kv.key} (revision {event.revision})"
    return f"PUT {event.kv.key} {_show_inline(event.kv.value)} (revision {event.revision})"


def format_kv(kv: KeyValue) -> str:
    return f"{kv.key} {_show_inline(kv.value)}"


def _value_arg(text: str) -> bytes:
    """The bytes the shell passed: argv is decoded with surrogateescape, so
    ``os.fsencode`` gives back even bytes that are not UTF-8."""
    return os.fsencode(text)


def _fail(message: str) -> NoReturn:
    # One line, always: a server's details may span several.
    line = " ".join(part.strip() for part in message.splitlines() if part.strip())
    print(f"paxos: error: {line}", file=sys.stderr)
    raise SystemExit(EXIT_NO)
