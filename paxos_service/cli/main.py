"""The ``paxos`` command: run a role's server, a local cluster, or act as a client.

    paxos acceptor --id ID --listen HOST:PORT --db PATH [--acceptors A0,A1,A2]
    paxos acceptor recover --id ID --db PATH --acceptors A0,A1,A2
    paxos proposer --id ID --listen HOST:PORT --acceptors A0,A1,A2 [--learners L0,...]
    paxos learner  --id ID --listen HOST:PORT --acceptors A0,A1,A2
    paxos cluster  [--acceptors 3] [--proposers 2] [--learners 1] [--data-dir ./data] [--tls]
    paxos certs    --out DIR [--hosts H1,H2] [--node NAME=HOSTS] [--days N] [--force]
    paxos propose  --proposer HOST:PORT INSTANCE VALUE
    paxos get      --learner HOST:PORT INSTANCE
    paxos kv       [--learners HOST:PORT,...] put|get|del|cas|range|watch ...
    paxos status   [--acceptors ...] [--proposers ...] [--learners ...] [--watch [S]] [--json]
    paxos explain  INSTANCE [--log] [--proposers ...] [--learners ...] [--json]

Server options fall back to ``PAXOS_<OPTION>`` environment variables. Errors
are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import base64
import sys
from collections.abc import Callable, Sequence
from pathlib import Path

from paxos_service.cli import kv as kv_cli
from paxos_service.cli import roles as roles_cli
from paxos_service.cli import status as status_cli
from paxos_service.cli.errors import fail
from paxos_service.cli.options import add_tls_options, env, int_at_least, require, tls_from_args
from paxos_service.core import processes
from paxos_service.core.config import (
    ConfigError,
    argparse_type,
    parse_address_list,
    parse_positive_float,
)


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``paxos`` parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(prog="paxos", description="Classic Paxos as gRPC services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    roles_cli.add_parsers(sub)

    cluster = sub.add_parser("cluster", help="run a local cluster, one process per role")
    cluster.add_argument("--acceptors", type=argparse_type(int_at_least(1), "count"), default=3)
    cluster.add_argument("--proposers", type=argparse_type(int_at_least(1), "count"), default=2)
    cluster.add_argument("--learners", type=argparse_type(int_at_least(1), "count"), default=1)
    cluster.add_argument("--data-dir", type=Path, default=Path("data"))
    cluster.add_argument("--base-port", type=argparse_type(int_at_least(1), "port"), default=50051)
    cluster.add_argument("--host", default="127.0.0.1", help="address to listen on")
    cluster.add_argument("--log-level", default="info", choices=["debug", "info", "warning"])
    cluster.add_argument(
        "--tls",
        action="store_true",
        help="mutual TLS between every process; certificates are made under DATA_DIR/tls "
        "(with `paxos certs`) unless already there",
    )

    certs = sub.add_parser(
        "certs",
        help="create a development CA and peer and client certificates",
        description="Create a development CA, one peer certificate for every node (OU=peer), "
        "and a client certificate (OU=client), each directory laid out as a cert-manager "
        "Secret: ca.crt, tls.crt, tls.key. For production, see docs/security.md.",
    )
    certs.add_argument("--out", type=Path, required=True, help="directory to write to")
    certs.add_argument(
        "--hosts",
        help="comma-separated DNS names and IPs the peer certificate is valid for: every "
        "name that peers and clients dial (default localhost,127.0.0.1,::1)",
    )
    certs.add_argument(
        "--node",
        action="append",
        default=[],
        metavar="NAME=HOSTS",
        help="also a peer certificate for one node alone, in DIR/NAME (repeatable)",
    )
    certs.add_argument(
        "--days",
        type=argparse_type(int_at_least(1), "days"),
        default=365,
        help="validity of the peer and client certificates in days (default 365; the CA: 3650)",
    )
    certs.add_argument("--force", action="store_true", help="replace an existing CA in --out")

    timeout = argparse_type(lambda t: parse_positive_float(t, "timeout"), "seconds")
    propose = sub.add_parser("propose", help="propose a value for an instance")
    propose.add_argument(
        "--proposer",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("proposers"),
        help="proposer address(es), comma-separated; tried in order [env PAXOS_PROPOSERS]",
    )
    propose.add_argument("--timeout", type=timeout, default=5.0)
    add_tls_options(propose, server=False)
    propose.add_argument("instance", type=argparse_type(int_at_least(1), "instance"))
    propose.add_argument("value", help="the value, as UTF-8 text")

    get = sub.add_parser("get", help="read the value chosen for an instance")
    get.add_argument(
        "--learner",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("learners"),
        help="learner address(es), comma-separated; tried in order [env PAXOS_LEARNERS]",
    )
    get.add_argument("--timeout", type=timeout, default=5.0)
    add_tls_options(get, server=False)
    get.add_argument("instance", type=argparse_type(int_at_least(1), "instance"))

    kv_cli.add_parser(sub)
    status_cli.add_parsers(sub)
    # `paxos bench` has its own parser (paxos_service.bench); listed here for --help.
    sub.add_parser("bench", help="benchmark a local cluster (--compare etcd: against etcd)")
    return parser, dict(sub.choices)


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from paxos_service.bench import main as bench_main

        return bench_main(argv[1:])
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    sub = subparsers[args.command]
    if args.command in roles_cli.COMMANDS:
        processes.follow_parent()
    runner = _RUNNERS.get(args.command)
    if runner is None:
        raise AssertionError(f"unhandled command {args.command}")
    try:
        return runner(args, sub)
    except ConfigError as exc:
        sub.error(str(exc))
    except KeyboardInterrupt:
        return 130


def _cluster(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    from paxos_service.cluster import LocalCluster

    return LocalCluster(
        acceptors=args.acceptors,
        proposers=args.proposers,
        learners=args.learners,
        data_dir=args.data_dir,
        base_port=args.base_port,
        host=args.host,
        log_level=args.log_level,
        tls=args.tls,
    ).run()


def _certs(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    from paxos_service.transport import certs

    return certs.run(args)


def _propose_command(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    require(sub, args, "proposer")
    return _propose(args)


def _get_command(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    require(sub, args, "learner")
    return _get(args)


#: Runs a parsed subcommand; the subcommand's parser is there to report usage errors.
Runner = Callable[[argparse.Namespace, argparse.ArgumentParser], int]

_RUNNERS: dict[str, Runner] = {
    **dict.fromkeys(roles_cli.COMMANDS, roles_cli.run),
    "cluster": _cluster,
    "certs": _certs,
    "propose": _propose_command,
    "get": _get_command,
    "kv": kv_cli.run,
    "status": lambda args, sub: status_cli.run_status(args),
    "explain": lambda args, sub: status_cli.run_explain(args),
}


def _propose(args: argparse.Namespace) -> int:
    from paxos_service.client.paxos import PaxosClient
    from paxos_service.core.errors import PaxosError

    value = args.value.encode()
    tls = tls_from_args(args, server=False)
    try:
        with PaxosClient(proposers=args.proposer, timeout=args.timeout, tls=tls) as client:
            result = client.propose_detailed(args.instance, value)
    except PaxosError as exc:
        fail(str(exc))
    print(_show(result.value))
    if not result.own_value_chosen:
        print(
            f"paxos: note: instance {args.instance} had already chosen another value; "
            "yours was not chosen",
            file=sys.stderr,
        )
    return 0


def _get(args: argparse.Namespace) -> int:
    from paxos_service.client.paxos import PaxosClient
    from paxos_service.core.errors import PaxosError

    tls = tls_from_args(args, server=False)
    try:
        with PaxosClient(learners=args.learner, timeout=args.timeout, tls=tls) as client:
            value = client.get(args.instance)
    except PaxosError as exc:
        fail(str(exc))
    if value is None:
        fail(f"instance {args.instance} is not decided: no value has been chosen for it yet")
    print(_show(value))
    return 0


def _show(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()
