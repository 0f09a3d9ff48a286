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
    paxos explain  INSTANCE [--proposers ...] [--learners ...] [--json]

Server options fall back to ``PAXOS_<OPTION>`` environment variables. Errors
are one line on stderr and a non-zero exit, never a traceback.
"""

from __future__ import annotations

import argparse
import asyncio
import base64
import os
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any, NoReturn

from paxos_service import kv_cli, log, processes, status_cli
from paxos_service.config import (
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_SHUTDOWN_GRACE,
    AcceptorConfig,
    ConfigError,
    LearnerConfig,
    ProposerConfig,
    ServerConfig,
    TlsFiles,
    argparse_type,
    parse_address,
    parse_address_list,
    parse_node_id,
    parse_positive_float,
)

EXIT_ERROR = 1
EXIT_USAGE = 2


def _env(option: str) -> str | None:
    return os.environ.get("PAXOS_" + option.upper().replace("-", "_")) or None


def _non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"must be >= 0, got {text!r}")
    return value


def _int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise ConfigError(f"must be >= {minimum}, got {value}")
        return value

    return convert


def _add_server_options(parser: argparse.ArgumentParser, default_listen: str) -> None:
    parser.add_argument(
        "--id",
        type=argparse_type(parse_node_id, "id"),
        default=_env("id"),
        help="node id: an integer, or a pod name ending in -<ordinal> [env PAXOS_ID]",
    )
    parser.add_argument(
        "--listen",
        type=argparse_type(parse_address, "address"),
        default=_env("listen") or default_listen,
        help=f"HOST:PORT to serve gRPC on (default {default_listen}) [env PAXOS_LISTEN]",
    )
    parser.add_argument(
        "--max-value-bytes",
        type=argparse_type(_int_at_least(1), "size"),
        default=_env("max_value_bytes") or DEFAULT_MAX_VALUE_BYTES,
        help="largest value accepted, in bytes (default 1 MiB) [env PAXOS_MAX_VALUE_BYTES]",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=argparse_type(lambda t: parse_positive_float(t, "grace"), "seconds"),
        default=_env("shutdown_grace") or DEFAULT_SHUTDOWN_GRACE,
        help="seconds in-flight calls get on SIGTERM (default 5) [env PAXOS_SHUTDOWN_GRACE]",
    )
    parser.add_argument(
        "--log-level",
        default=_env("log_level") or "info",
        choices=["debug", "info", "warning", "error"],
        help="[env PAXOS_LOG_LEVEL]",
    )
    add_tls_options(parser, server=True)
    parser.add_argument(
        "--metrics-listen",
        type=argparse_type(parse_address, "address"),
        default=_env("metrics_listen"),
        help="HOST:PORT to serve Prometheus metrics on, at /metrics (default: none) "
        "[env PAXOS_METRICS_LISTEN]",
    )
    parser.add_argument(
        "--health-listen",
        type=argparse_type(parse_address, "address"),
        default=_env("health_listen"),
        help="HOST:PORT to serve only grpc.health.v1 on, in plaintext, for probes that "
        "cannot do TLS such as Kubernetes' gRPC probes (default: none) "
        "[env PAXOS_HEALTH_LISTEN]",
    )


def add_tls_options(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """--tls-ca/--tls-cert/--tls-key (and, for servers, --insecure)."""
    who = "this server's" if server else "this client's"
    parser.add_argument(
        "--tls-ca", type=Path, default=_env("tls_ca"), help="cluster CA (PEM) [env PAXOS_TLS_CA]"
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=_env("tls_cert"),
        help=f"{who} certificate (PEM), signed by the cluster CA [env PAXOS_TLS_CERT]",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=_env("tls_key"),
        help=f"{who} private key (PEM) [env PAXOS_TLS_KEY]",
    )
    if server:
        parser.add_argument(
            "--insecure",
            action="store_true",
            default=(_env("insecure") or "").lower() in ("1", "true", "yes"),
            help="serve plaintext without TLS (only for local testing; logs a warning) "
            "[env PAXOS_INSECURE=true]",
        )


def tls_from_args(args: argparse.Namespace, *, server: bool) -> TlsFiles | None:
    """The TLS files named on the command line, or None for plaintext. A server
    needs either all three files or --insecure; a client needs all three or none."""
    given = {
        "--tls-ca": args.tls_ca,
        "--tls-cert": args.tls_cert,
        "--tls-key": args.tls_key,
    }
    missing = [flag for flag, value in given.items() if value is None]
    insecure = bool(getattr(args, "insecure", False))
    if not missing:
        if insecure:
            raise ConfigError("--insecure and --tls-* are mutually exclusive: pick one")
        return TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    if len(missing) < len(given):
        raise ConfigError(
            f"TLS needs --tls-ca, --tls-cert and --tls-key; missing {', '.join(missing)}"
        )
    if server and not insecure:
        raise ConfigError(
            "TLS is required: give --tls-ca, --tls-cert and --tls-key (`paxos certs` makes a "
            "development set), or --insecure to serve plaintext"
        )
    return None


def _add_acceptor_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--acceptors",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("acceptors"),
        help="comma-separated acceptor addresses in id order: the i-th runs with --id i "
        "[env PAXOS_ACCEPTORS]",
    )


def build_parser() -> tuple[argparse.ArgumentParser, dict[str, argparse.ArgumentParser]]:
    """The ``paxos`` parser and its subcommand parsers by name."""
    parser = argparse.ArgumentParser(prog="paxos", description="Classic Paxos as gRPC services.")
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")

    acceptor = sub.add_parser(
        "acceptor",
        help="run an acceptor (durable, SQLite), or rebuild one that lost its data",
        description="Run an acceptor. With `recover`, rebuild the database of an acceptor "
        "that lost its data from every other acceptor instead (all must be up), so that it "
        "can vote again; then restart it. See README.md, 'The durability contract'.",
    )
    acceptor.add_argument(
        "action",
        nargs="?",
        choices=["recover"],
        help="recover: rebuild this acceptor's database from its peers, then exit",
    )
    _add_server_options(acceptor, "0.0.0.0:50051")
    acceptor.add_argument(
        "--db", type=Path, default=_env("db"), help="SQLite file of this acceptor [env PAXOS_DB]"
    )
    acceptor.add_argument(
        "--cluster-id",
        default=_env("cluster_id") or "paxos",
        help="name of the cluster this acceptor's file belongs to [env PAXOS_CLUSTER_ID]",
    )
    acceptor.add_argument(
        "--max-resident-instances",
        type=argparse_type(_int_at_least(2), "count"),
        default=_env("max_resident_instances") or 20_000,
        help="instances kept in memory; older ones are read from disk when asked for "
        "(default 20000, at least 2) [env PAXOS_MAX_RESIDENT_INSTANCES]",
    )
    acceptor.add_argument(
        "--acceptors",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("acceptors"),
        help="every acceptor's address in id order, this one included: turns on the checks "
        "that keep an acceptor that lost its data from voting (needed by recover) "
        "[env PAXOS_ACCEPTORS]",
    )
    acceptor.add_argument(
        "--settle",
        type=argparse_type(_non_negative_float, "seconds"),
        default=30.0,
        help="recover: seconds to wait before reading the peers, so that no vote of the "
        "lost acceptor is still in flight (default 30)",
    )

    proposer = sub.add_parser("proposer", help="run a proposer")
    _add_server_options(proposer, "0.0.0.0:50051")
    _add_acceptor_list(proposer)
    proposer.add_argument(
        "--learners",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("learners"),
        help="learners to tell about decisions [env PAXOS_LEARNERS]",
    )
    proposer.add_argument(
        "--proposers",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("proposers"),
        help="every proposer's address in id order, this one included; enables the replicated "
        "log with leader election [env PAXOS_PROPOSERS]",
    )
    seconds = argparse_type(lambda t: parse_positive_float(t, "seconds"), "seconds")
    proposer.add_argument(
        "--heartbeat-interval",
        type=seconds,
        default=_env("heartbeat_interval") or 0.05,
        help="log leader's heartbeat period, s (default 0.05) [env PAXOS_HEARTBEAT_INTERVAL]",
    )
    proposer.add_argument(
        "--election-timeout",
        type=seconds,
        default=_env("election_timeout") or 0.3,
        help="campaign after a random [T, 2T) without a heartbeat, s (default 0.3) "
        "[env PAXOS_ELECTION_TIMEOUT]",
    )
    proposer.add_argument(
        "--window",
        type=argparse_type(_int_at_least(1), "count"),
        default=_env("window") or 4,
        help="log instances in phase 2 at once (default 4; commands arriving meanwhile "
        "share the next one) [env PAXOS_WINDOW]",
    )
    proposer.add_argument(
        "--max-batch",
        type=argparse_type(_int_at_least(1), "count"),
        default=_env("max_batch") or 512,
        help="commands per log instance at most (default 512) [env PAXOS_MAX_BATCH]",
    )
    proposer.add_argument(
        "--propose-timeout",
        type=argparse_type(lambda t: parse_positive_float(t, "timeout"), "seconds"),
        default=_env("propose_timeout") or 10.0,
        help="longest a Propose may take when the client sets no deadline (default 10)",
    )

    learner = sub.add_parser("learner", help="run a learner (and, with --db, a KV replica)")
    _add_server_options(learner, "0.0.0.0:50051")
    _add_acceptor_list(learner)
    learner.add_argument(
        "--db",
        type=Path,
        default=_env("db"),
        help="SQLite file of this learner's key-value replica; enables the KV service "
        "[env PAXOS_DB]",
    )
    learner.add_argument(
        "--proposers",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("proposers"),
        help="proposers to append KV commands through (needed with --db) [env PAXOS_PROPOSERS]",
    )

    cluster = sub.add_parser("cluster", help="run a local cluster, one process per role")
    cluster.add_argument("--acceptors", type=argparse_type(_int_at_least(1), "count"), default=3)
    cluster.add_argument("--proposers", type=argparse_type(_int_at_least(1), "count"), default=2)
    cluster.add_argument("--learners", type=argparse_type(_int_at_least(1), "count"), default=1)
    cluster.add_argument("--data-dir", type=Path, default=Path("data"))
    cluster.add_argument("--base-port", type=argparse_type(_int_at_least(1), "port"), default=50051)
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
        type=argparse_type(_int_at_least(1), "days"),
        default=365,
        help="validity of the peer and client certificates in days (default 365; the CA: 3650)",
    )
    certs.add_argument("--force", action="store_true", help="replace an existing CA in --out")

    timeout = argparse_type(lambda t: parse_positive_float(t, "timeout"), "seconds")
    propose = sub.add_parser("propose", help="propose a value for an instance")
    propose.add_argument(
        "--proposer",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("proposers"),
        help="proposer address(es), comma-separated; tried in order [env PAXOS_PROPOSERS]",
    )
    propose.add_argument("--timeout", type=timeout, default=5.0)
    add_tls_options(propose, server=False)
    propose.add_argument("instance", type=argparse_type(_int_at_least(1), "instance"))
    propose.add_argument("value", help="the value, as UTF-8 text")

    get = sub.add_parser("get", help="read the value chosen for an instance")
    get.add_argument(
        "--learner",
        type=argparse_type(parse_address_list, "addresses"),
        default=_env("learners"),
        help="learner address(es), comma-separated; tried in order [env PAXOS_LEARNERS]",
    )
    get.add_argument("--timeout", type=timeout, default=5.0)
    add_tls_options(get, server=False)
    get.add_argument("instance", type=argparse_type(_int_at_least(1), "instance"))

    kv_cli.add_parser(sub)
    status_cli.add_parsers(sub)
    # `paxos bench` has its own parser (paxos_service.bench); listed here for --help.
    sub.add_parser("bench", help="benchmark a local cluster (--compare etcd: against etcd)")
    return parser, dict(sub.choices)


def _require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} is required (or set PAXOS_{name.upper()})")


def _server_fields(args: argparse.Namespace) -> dict[str, Any]:
    return {
        "node_id": args.id,
        "listen": args.listen,
        "shutdown_grace": float(args.shutdown_grace),
        "max_value_bytes": int(args.max_value_bytes),
        "tls": tls_from_args(args, server=True),
        "metrics_listen": args.metrics_listen,
        "health_listen": args.health_listen,
    }


def main(argv: Sequence[str] | None = None) -> int:
    argv = list(sys.argv[1:] if argv is None else argv)
    if argv[:1] == ["bench"]:
        from paxos_service.bench import main as bench_main

        return bench_main(argv[1:])
    parser, subparsers = build_parser()
    args = parser.parse_args(argv)
    sub = subparsers[args.command]
    if args.command in ("acceptor", "proposer", "learner"):
        processes.follow_parent()
    try:
        if args.command == "acceptor":
            _require(sub, args, "id", "db")
            config = AcceptorConfig(
                **_server_fields(args),
                db_path=args.db,
                cluster_id=args.cluster_id,
                max_resident_instances=int(args.max_resident_instances),
            )
            acceptors = args.acceptors or []
            if acceptors and args.id >= len(acceptors):
                sub.error(
                    f"--id {args.id} has no entry in --acceptors ({len(acceptors)} entries): "
                    "acceptor i must be the i-th"
                )
            if args.action == "recover":
                _require(sub, args, "acceptors")
                return _recover_acceptor(config, acceptors, float(args.settle))
            return _run_acceptor(config, acceptors, args.log_level)
        if args.command == "proposer":
            _require(sub, args, "id", "acceptors")
            return _run_server(
                ProposerConfig(
                    **_server_fields(args),
                    acceptors=args.acceptors,
                    learners=args.learners or [],
                    proposers=args.proposers or [],
                    propose_timeout=float(args.propose_timeout),
                    heartbeat_interval=float(args.heartbeat_interval),
                    election_timeout=float(args.election_timeout),
                    window=int(args.window),
                    max_batch=int(args.max_batch),
                ),
                "proposer",
                args.log_level,
            )
        if args.command == "learner":
            _require(sub, args, "id", "acceptors")
            if args.db is not None:
                _require(sub, args, "proposers")
            return _run_server(
                LearnerConfig(
                    **_server_fields(args),
                    acceptors=args.acceptors,
                    proposers=args.proposers or [],
                    db_path=args.db,
                ),
                "learner",
                args.log_level,
            )
        if args.command == "cluster":
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
        if args.command == "certs":
            from paxos_service import certs

            return certs.run(args)
        if args.command == "propose":
            _require(sub, args, "proposer")
            return _propose(args)
        if args.command == "get":
            _require(sub, args, "learner")
            return _get(args)
        if args.command == "kv":
            return kv_cli.run(args, sub)
        if args.command == "status":
            return status_cli.run_status(args)
        if args.command == "explain":
            return status_cli.run_explain(args)
    except ConfigError as exc:
        sub.error(str(exc))
    except KeyboardInterrupt:
        return 130
    raise AssertionError(f"unhandled command {args.command}")


def _fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print(f"paxos: error: {message}", file=sys.stderr)
    raise SystemExit(code)


def _run_acceptor(config: AcceptorConfig, acceptors: list[str], log_level: str) -> int:
    from paxos_service.acceptor_server import start_acceptor
    from paxos_service.sqlite_storage import SqliteAcceptorStorage
    from paxos_service.storage import StorageCorrupt

    log.configure("acceptor", config.node_id, log_level)
    storage = SqliteAcceptorStorage(
        config.db_path, acceptor_id=config.node_id, cluster_id=config.cluster_id
    )
    try:
        storage.open()
    except StorageCorrupt as exc:
        log.get_logger().critical("refusing to start", error=str(exc))
        _fail(f"acceptor {config.node_id} refuses to start: {exc}")
    if storage.created:
        log.get_logger().info(
            "created a new acceptor database",
            db=str(config.db_path),
            incarnation=storage.incarnation,
        )

    async def serve() -> None:
        try:
            role, servicer = await start_acceptor(config, storage, acceptors)
        except BaseException:
            storage.close()
            raise
        try:
            await _until_signalled(role, config.shutdown_grace)
        finally:
            await servicer.close()
            storage.close()

    return _serve(serve)


def _recover_acceptor(config: AcceptorConfig, acceptors: list[str], settle: float) -> int:
    """``paxos acceptor recover``: rebuild this acceptor's database from every
    other acceptor (see paxos_service/identity.py), then exit."""
    from paxos_service.identity import RecoveryError, recover
    from paxos_service.sqlite_storage import SqliteAcceptorStorage
    from paxos_service.storage import StorageError

    log.configure("acceptor", config.node_id, "warning")
    storage = SqliteAcceptorStorage(
        config.db_path, acceptor_id=config.node_id, cluster_id=config.cluster_id
    )
    try:
        storage.open()
    except StorageError as exc:
        _fail(f"cannot recover acceptor {config.node_id}: {exc}")
    try:
        result = asyncio.run(
            recover(
                acceptor_id=config.node_id,
                storage=storage,
                cluster_id=config.cluster_id,
                acceptors=acceptors,
                settle=settle,
                tls=config.tls,
                say=lambda line: print(line, flush=True),
            )
        )
    except (RecoveryError, StorageError) as exc:
        _fail(f"cannot recover acceptor {config.node_id}: {exc}")
    finally:
        storage.close()
    print(
        f"acceptor {config.node_id} is recovered (incarnation {result.incarnation}); "
        "restart it and it votes again, except on instances "
        f"<= {result.plan.no_vote_through}",
        flush=True,
    )
    return 0


def _run_server(config: ServerConfig, role_name: str, log_level: str) -> int:
    log.configure(role_name, config.node_id, log_level)

    async def serve() -> None:
        if isinstance(config, ProposerConfig):
            from paxos_service.proposer_server import start_proposer

            role, driver, log_driver = await start_proposer(config)

            async def closer() -> None:
                if log_driver is not None:
                    await log_driver.stop()
                await driver.close()

        else:
            assert isinstance(config, LearnerConfig)
            from paxos_service.learner_server import start_learner

            role, servicer = await start_learner(config)
            closer = servicer.close
        try:
            await _until_signalled(role, config.shutdown_grace)
        finally:
            await closer()

    return _serve(serve)


async def _until_signalled(role: Any, grace: float) -> None:
    from paxos_service.server import run_until_signalled

    await run_until_signalled(role, grace)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio's own loop, or uvloop with PAXOS_EVENT_LOOP=uvloop: about 8 %
    less CPU per write under load, but with it a cluster's first writes after
    start sometimes stalled past their deadline in CI (docs/performance.md),
    so it is not the default."""
    choice = _env("event_loop") or "asyncio"
    if choice == "asyncio":
        return None
    if choice != "uvloop":
        raise ConfigError(f"PAXOS_EVENT_LOOP must be uvloop or asyncio, got {choice!r}")
    try:
        import uvloop
    except ImportError:  # a platform without it (Windows): asyncio's own loop
        return None
    return uvloop.new_event_loop


def _serve(serve: Callable[[], Any]) -> int:
    from paxos_service.server import BindError
    from paxos_service.storage import StorageCorrupt

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve())
    except (BindError, StorageCorrupt, ConfigError) as exc:
        log.get_logger().critical("cannot start", error=str(exc))
        _fail(f"refusing to start: {exc}")
    return 0


def _propose(args: argparse.Namespace) -> int:
    from paxos_service.client import PaxosClient, PaxosError

    value = args.value.encode()
    tls = tls_from_args(args, server=False)
    try:
        with PaxosClient(proposers=args.proposer, timeout=args.timeout, tls=tls) as client:
            result = client.propose_detailed(args.instance, value)
    except PaxosError as exc:
        _fail(str(exc))
    print(_show(result.value))
    if not result.own_value_chosen:
        print(
            f"paxos: note: instance {args.instance} had already chosen another value; "
            "yours was not chosen",
            file=sys.stderr,
        )
    return 0


def _get(args: argparse.Namespace) -> int:
    from paxos_service.client import PaxosClient, PaxosError

    tls = tls_from_args(args, server=False)
    try:
        with PaxosClient(learners=args.learner, timeout=args.timeout, tls=tls) as client:
            value = client.get(args.instance)
    except PaxosError as exc:
        _fail(str(exc))
    if value is None:
        _fail(f"instance {args.instance} is not decided: no value has been chosen for it yet")
    print(_show(value))
    return 0


def _show(value: bytes) -> str:
    try:
        return value.decode()
    except UnicodeDecodeError:
        return "base64:" + base64.b64encode(value).decode()
