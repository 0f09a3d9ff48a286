"""``paxos acceptor|proposer|learner``: run one role's server until SIGTERM.

``paxos acceptor recover`` is dispatched here too, and runs
:mod:`paxos_service.cli.recover`. The servers are imported only when a
command runs, so that the client commands start without loading them.
"""

from __future__ import annotations

import argparse
import asyncio
from collections.abc import Callable
from pathlib import Path
from typing import Any

from paxos_service.cli.errors import fail
from paxos_service.cli.options import (
    add_tls_options,
    env,
    int_at_least,
    non_negative_float,
    require,
    tls_from_args,
)
from paxos_service.cli.recover import recover_acceptor
from paxos_service.core import logger
from paxos_service.core.config import (
    DEFAULT_KV_RETAIN_REVISIONS,
    DEFAULT_MAX_VALUE_BYTES,
    DEFAULT_QUOTA_BYTES,
    DEFAULT_RETAIN_LOG_BYTES,
    DEFAULT_SHUTDOWN_GRACE,
    AcceptorConfig,
    ConfigError,
    LearnerConfig,
    ProposerConfig,
    ServerConfig,
    argparse_type,
    parse_address,
    parse_address_list,
    parse_node_id,
    parse_positive_float,
)

COMMANDS = ("acceptor", "proposer", "learner")


def add_parsers(sub: argparse._SubParsersAction[argparse.ArgumentParser]) -> None:
    """Register ``acceptor``, ``proposer`` and ``learner`` under the ``paxos`` subcommands."""
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
        "--db", type=Path, default=env("db"), help="SQLite file of this acceptor [env PAXOS_DB]"
    )
    acceptor.add_argument(
        "--cluster-id",
        default=env("cluster_id") or "paxos",
        help="name of the cluster this acceptor's file belongs to [env PAXOS_CLUSTER_ID]",
    )
    acceptor.add_argument(
        "--max-resident-instances",
        type=argparse_type(int_at_least(2), "count"),
        default=env("max_resident_instances") or 20_000,
        help="instances kept in memory; older ones are read from disk when asked for "
        "(default 20000, at least 2) [env PAXOS_MAX_RESIDENT_INSTANCES]",
    )
    acceptor.add_argument(
        "--acceptors",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("acceptors"),
        help="every acceptor's address in id order, this one included: turns on the checks "
        "that keep an acceptor that lost its data from voting (needed by recover) "
        "[env PAXOS_ACCEPTORS]",
    )
    acceptor.add_argument(
        "--settle",
        type=argparse_type(non_negative_float, "seconds"),
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
        default=env("learners"),
        help="learners to tell about decisions [env PAXOS_LEARNERS]",
    )
    proposer.add_argument(
        "--proposers",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("proposers"),
        help="every proposer's address in id order, this one included; enables the replicated "
        "log with leader election [env PAXOS_PROPOSERS]",
    )
    seconds = argparse_type(lambda t: parse_positive_float(t, "seconds"), "seconds")
    proposer.add_argument(
        "--heartbeat-interval",
        type=seconds,
        default=env("heartbeat_interval") or 0.05,
        help="log leader's heartbeat period, s (default 0.05) [env PAXOS_HEARTBEAT_INTERVAL]",
    )
    proposer.add_argument(
        "--election-timeout",
        type=seconds,
        default=env("election_timeout") or 0.3,
        help="campaign after a random [T, 2T) without a heartbeat, s (default 0.3) "
        "[env PAXOS_ELECTION_TIMEOUT]",
    )
    proposer.add_argument(
        "--window",
        type=argparse_type(int_at_least(1), "count"),
        default=env("window") or 4,
        help="log instances in phase 2 at once (default 4; commands arriving meanwhile "
        "share the next one) [env PAXOS_WINDOW]",
    )
    proposer.add_argument(
        "--max-batch",
        type=argparse_type(int_at_least(1), "count"),
        default=env("max_batch") or 512,
        help="commands per log instance at most (default 512) [env PAXOS_MAX_BATCH]",
    )
    proposer.add_argument(
        "--propose-timeout",
        type=argparse_type(lambda t: parse_positive_float(t, "timeout"), "seconds"),
        default=env("propose_timeout") or 10.0,
        help="longest a Propose may take when the client sets no deadline (default 10)",
    )

    learner = sub.add_parser("learner", help="run a learner (and, with --db, a KV replica)")
    _add_server_options(learner, "0.0.0.0:50051")
    _add_acceptor_list(learner)
    learner.add_argument(
        "--db",
        type=Path,
        default=env("db"),
        help="SQLite file of this learner's key-value replica; enables the KV service "
        "[env PAXOS_DB]",
    )
    learner.add_argument(
        "--proposers",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("proposers"),
        help="proposers to append KV commands through (needed with --db) [env PAXOS_PROPOSERS]",
    )
    learner.add_argument(
        "--kv-retain-revisions",
        type=argparse_type(int_at_least(0), "revisions"),
        default=env("kv_retain_revisions") or DEFAULT_KV_RETAIN_REVISIONS,
        help="watch history kept: the last N revisions; a watch from before them gets "
        f"OUT_OF_RANGE with the compact revision (0: keep all; default "
        f"{DEFAULT_KV_RETAIN_REVISIONS:,}) [env PAXOS_KV_RETAIN_REVISIONS]",
    )
    learner.add_argument(
        "--learners",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("learners"),
        help="every learner in id order, this one included: where a new, wiped or lagging "
        "learner fetches a snapshot once the acceptors have compacted the log it needs "
        "[env PAXOS_LEARNERS]",
    )
    learner.add_argument(
        "--retain-log-bytes",
        type=argparse_type(int_at_least(1), "bytes"),
        default=env("retain_log_bytes") or DEFAULT_RETAIN_LOG_BYTES,
        help="take a snapshot once this many bytes of log were applied since the last one; "
        "the acceptors keep about this much log above the compaction point (default "
        f"{DEFAULT_RETAIN_LOG_BYTES // (1024 * 1024)} MiB) [env PAXOS_RETAIN_LOG_BYTES]",
    )
    learner.add_argument(
        "--quota-bytes",
        type=argparse_type(int_at_least(0), "bytes"),
        default=env("quota_bytes") or DEFAULT_QUOTA_BYTES,
        help="refuse puts and compare-and-swaps with RESOURCE_EXHAUSTED while the store "
        "data takes more than this; reads, deletes and compaction go on "
        f"(0: no quota; default {DEFAULT_QUOTA_BYTES // (1024**3)} GiB) [env PAXOS_QUOTA_BYTES]",
    )


def _add_server_options(parser: argparse.ArgumentParser, default_listen: str) -> None:
    parser.add_argument(
        "--id",
        type=argparse_type(parse_node_id, "id"),
        default=env("id"),
        help="node id: an integer, or a pod name ending in -<ordinal> [env PAXOS_ID]",
    )
    parser.add_argument(
        "--listen",
        type=argparse_type(parse_address, "address"),
        default=env("listen") or default_listen,
        help=f"HOST:PORT to serve gRPC on (default {default_listen}) [env PAXOS_LISTEN]",
    )
    parser.add_argument(
        "--max-value-bytes",
        type=argparse_type(int_at_least(1), "size"),
        default=env("max_value_bytes") or DEFAULT_MAX_VALUE_BYTES,
        help="largest value accepted, in bytes (default 1 MiB) [env PAXOS_MAX_VALUE_BYTES]",
    )
    parser.add_argument(
        "--shutdown-grace",
        type=argparse_type(lambda t: parse_positive_float(t, "grace"), "seconds"),
        default=env("shutdown_grace") or DEFAULT_SHUTDOWN_GRACE,
        help="seconds in-flight calls get on SIGTERM (default 5) [env PAXOS_SHUTDOWN_GRACE]",
    )
    parser.add_argument(
        "--log-level",
        default=env("log_level") or "info",
        choices=["debug", "info", "warning", "error"],
        help="[env PAXOS_LOG_LEVEL]",
    )
    add_tls_options(parser, server=True)
    parser.add_argument(
        "--metrics-listen",
        type=argparse_type(parse_address, "address"),
        default=env("metrics_listen"),
        help="HOST:PORT to serve Prometheus metrics on, at /metrics (default: none) "
        "[env PAXOS_METRICS_LISTEN]",
    )
    parser.add_argument(
        "--health-listen",
        type=argparse_type(parse_address, "address"),
        default=env("health_listen"),
        help="HOST:PORT to serve only grpc.health.v1 on, in plaintext, for probes that "
        "cannot do TLS such as Kubernetes' gRPC probes (default: none) "
        "[env PAXOS_HEALTH_LISTEN]",
    )


def _add_acceptor_list(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--acceptors",
        type=argparse_type(parse_address_list, "addresses"),
        default=env("acceptors"),
        help="comma-separated acceptor addresses in id order: the i-th runs with --id i "
        "[env PAXOS_ACCEPTORS]",
    )


def run(args: argparse.Namespace, sub: argparse.ArgumentParser) -> int:
    """Run ``paxos acceptor|proposer|learner`` with parsed ``args`` (``sub`` is
    its parser, for usage errors); return the exit status."""
    if args.command == "acceptor":
        require(sub, args, "id", "db")
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
            require(sub, args, "acceptors")
            return recover_acceptor(config, acceptors, float(args.settle))
        return _run_acceptor(config, acceptors, args.log_level)
    if args.command == "proposer":
        require(sub, args, "id", "acceptors")
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
        require(sub, args, "id", "acceptors")
        if args.db is not None:
            require(sub, args, "proposers")
        return _run_server(
            LearnerConfig(
                **_server_fields(args),
                acceptors=args.acceptors,
                proposers=args.proposers or [],
                db_path=args.db,
                kv_retain_revisions=int(args.kv_retain_revisions),
                learners=args.learners or [],
                retain_log_bytes=int(args.retain_log_bytes),
                quota_bytes=int(args.quota_bytes),
            ),
            "learner",
            args.log_level,
        )
    raise AssertionError(f"not a role: {args.command}")


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


def _run_acceptor(config: AcceptorConfig, acceptors: list[str], log_level: str) -> int:
    from paxos_service.servers.start import start_acceptor
    from paxos_service.storage.contract import StorageCorrupt
    from paxos_service.storage.sqlite import SqliteAcceptorStorage

    logger.configure("acceptor", config.node_id, log_level)
    storage = SqliteAcceptorStorage(
        config.db_path, acceptor_id=config.node_id, cluster_id=config.cluster_id
    )
    try:
        storage.open()
    except StorageCorrupt as exc:
        logger.get_logger().critical("refusing to start", error=str(exc))
        fail(f"acceptor {config.node_id} refuses to start: {exc}")
    if storage.created:
        logger.get_logger().info(
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


def _run_server(config: ServerConfig, role_name: str, log_level: str) -> int:
    logger.configure(role_name, config.node_id, log_level)

    async def serve() -> None:
        if isinstance(config, ProposerConfig):
            from paxos_service.servers.start import start_proposer

            role, driver, log_driver = await start_proposer(config)

            async def closer() -> None:
                if log_driver is not None:
                    await log_driver.stop()
                await driver.close()

        else:
            assert isinstance(config, LearnerConfig)
            from paxos_service.servers.start import start_learner

            role, servicer = await start_learner(config)
            closer = servicer.close
        try:
            await _until_signalled(role, config.shutdown_grace)
        finally:
            await closer()

    return _serve(serve)


async def _until_signalled(role: Any, grace: float) -> None:
    from paxos_service.transport.server import run_until_signalled

    await run_until_signalled(role, grace)


def _loop_factory() -> Callable[[], asyncio.AbstractEventLoop] | None:
    """asyncio's own loop, or uvloop with PAXOS_EVENT_LOOP=uvloop: about 8 %
    less CPU per write under load, but with it a cluster's first writes after
    start sometimes stalled past their deadline in CI (docs/performance.md),
    so it is not the default."""
    choice = env("event_loop") or "asyncio"
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
    from paxos_service.storage.contract import StorageCorrupt
    from paxos_service.transport.errors import BindError

    try:
        with asyncio.Runner(loop_factory=_loop_factory()) as runner:
            runner.run(serve())
    except (BindError, StorageCorrupt, ConfigError) as exc:
        logger.get_logger().critical("cannot start", error=str(exc))
        fail(f"refusing to start: {exc}")
    return 0
