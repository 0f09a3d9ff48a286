"""``paxos acceptor recover``: rebuild the database of an acceptor that lost
its data from every other acceptor, so that it can vote again."""

from __future__ import annotations

import asyncio

from paxos_service.cli.errors import fail
from paxos_service.core import logger
from paxos_service.core.config import AcceptorConfig


def recover_acceptor(config: AcceptorConfig, acceptors: list[str], settle: float) -> int:
    """``paxos acceptor recover``: rebuild this acceptor's database from every
    other acceptor (see paxos_service/node/recovery.py), then exit."""
    from paxos_service.node.recovery import RecoveryError, recover
    from paxos_service.storage.contract import StorageError
    from paxos_service.storage.sqlite import SqliteAcceptorStorage

    logger.configure("acceptor", config.node_id, "warning")
    storage = SqliteAcceptorStorage(
        config.db_path, acceptor_id=config.node_id, cluster_id=config.cluster_id
    )
    try:
        storage.open()
    except StorageError as exc:
        fail(f"cannot recover acceptor {config.node_id}: {exc}")
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
        fail(f"cannot recover acceptor {config.node_id}: {exc}")
    finally:
        storage.close()
    print(
        f"acceptor {config.node_id} is recovered (incarnation {result.incarnation}); "
        "restart it and it votes again, except on instances "
        f"<= {result.plan.no_vote_through}",
        flush=True,
    )
    return 0
