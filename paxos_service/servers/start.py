"""Starting a node: build a role's servicer, register it with its operator
view on one gRPC server, and serve.

This is the one place that knows every piece of a node, so the dependencies
run one way: start -> servicers and views -> the operator service.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Sequence
from pathlib import Path

import grpc
import structlog

from paxos_service.core import log_entry, runtime
from paxos_service.core.config import AcceptorConfig, LearnerConfig, ProposerConfig
from paxos_service.core.logger import get_logger
from paxos_service.kv import snapshot_file
from paxos_service.kv.snapshot import InvalidSnapshot
from paxos_service.kv.snapshot_file import SnapshotInfo
from paxos_service.kv.state_machine import KvStateMachine
from paxos_service.node.appender import LogAppender
from paxos_service.node.identity import IdentityGuard
from paxos_service.node.log_driver import LogDriver
from paxos_service.node.proposer_driver import ProposerDriver
from paxos_service.node.replica import Bounds, Replica
from paxos_service.servers import operator as operator_server
from paxos_service.servers.acceptor import SERVICE_NAME as ACCEPTOR_SERVICE_NAME
from paxos_service.servers.acceptor import AcceptorServicer
from paxos_service.servers.acceptor_states import resident_after_eviction
from paxos_service.servers.kv import KV_WRITES_HEALTH, KvServicer
from paxos_service.servers.kv import SERVICE_NAME as KV_SERVICE_NAME
from paxos_service.servers.learner import SERVICE_NAME as LEARNER_SERVICE_NAME
from paxos_service.servers.learner import LearnerServicer
from paxos_service.servers.proposer import SERVICE_NAME as PROPOSER_SERVICE_NAME
from paxos_service.servers.proposer import ProposerServicer
from paxos_service.servers.views import AcceptorView, LearnerView, ProposerView
from paxos_service.storage.contract import AcceptorFile
from paxos_service.storage.group_commit import GroupCommitter
from paxos_service.transport import tls
from paxos_service.transport.channels import channel_options
from paxos_service.transport.peers import connect_acceptors, describe_rpc_error
from paxos_service.transport.server import RoleServer, start_server
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

# The acceptor -----------------------------------------------------------------


async def start_acceptor(
    config: AcceptorConfig, storage: AcceptorFile, acceptors: Sequence[str] = ()
) -> tuple[RoleServer, AcceptorServicer]:
    """Load all state from ``storage`` (already opened and checked) and serve.

    ``acceptors`` lists every acceptor's address in id order, this one's
    included; it turns the identity checks on (see :mod:`paxos_service.node.identity`).
    """
    executor = runtime.storage_executor("acceptor-storage")
    loop = asyncio.get_running_loop()
    states, spilled_through = await loop.run_in_executor(
        executor,
        storage.load_newest,
        resident_after_eviction(config.max_resident_instances),
    )
    range_promise = await loop.run_in_executor(executor, storage.load_range_promise)
    committer = GroupCommitter(storage, executor)
    committer.start()
    identity = IdentityGuard(
        acceptor_id=config.node_id,
        cluster_id=config.cluster_id,
        db_path=config.db_path,
        storage=storage,
        run_storage=committer.run,
        acceptors=list(acceptors),
        tls=config.tls,
    )
    try:
        await identity.start()
    except BaseException:
        await committer.stop()
        raise
    servicer = AcceptorServicer(
        config,
        states,
        committer,
        range_promise,
        identity,
        storage.no_vote_through,
        spilled_through=spilled_through,
    )

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_AcceptorServiceServicer_to_server(servicer, server)
        operator_server.add_to_server(AcceptorView(servicer), server)

    try:
        role = await start_server(
            config,
            ACCEPTOR_SERVICE_NAME,
            register,
            serving=identity.voting,
            extra_services=(operator_server.SERVICE_NAME,),
        )
    except BaseException:
        await committer.stop()
        await identity.stop()
        raise
    servicer.role_server = role

    async def voting_changed(voting: bool) -> None:
        await role.set_serving(voting and committer.failure is None)

    identity.on_voting_changed = voting_changed
    identity.launch()
    structlog.contextvars.bind_contextvars()
    get_logger().info(
        "acceptor serving",
        address=config.listen,
        port=role.port,
        db=str(config.db_path),
        instances=len(states),
        incarnation=storage.incarnation,
        status=identity.status.value,
        no_vote_through=storage.no_vote_through or None,
    )
    return role, servicer


# The proposer -----------------------------------------------------------------


async def start_proposer(
    config: ProposerConfig,
) -> tuple[RoleServer, ProposerDriver, LogDriver | None]:
    driver = ProposerDriver(config)
    log: LogDriver | None = None
    if config.proposers:
        log = LogDriver(config, driver.acceptors, driver.learners)
        log.start()
    servicer = ProposerServicer(driver, log)

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_ProposerServiceServicer_to_server(servicer, server)
        operator_server.add_to_server(ProposerView(driver, log), server)

    role = await start_server(
        config, PROPOSER_SERVICE_NAME, register, extra_services=(operator_server.SERVICE_NAME,)
    )
    get_logger().info(
        "proposer serving",
        address=config.listen,
        port=role.port,
        acceptors=config.acceptors,
        learners=config.learners,
        log=log is not None,
    )
    return role, driver, log


# The learner ------------------------------------------------------------------


async def start_learner(config: LearnerConfig) -> tuple[RoleServer, LearnerServicer]:
    """Serve the learner; with ``config.db_path``, also the replicated KV store.
    Raises StorageCorrupt if the KV file cannot be used."""
    replica: Replica | None = None
    kv: KvServicer | None = None
    if config.db_path is not None:
        executor = runtime.storage_executor("kv-store")
        loop = asyncio.get_running_loop()
        machine = await loop.run_in_executor(executor, KvStateMachine.open, config.db_path)
        snapshot_path = snapshot_file.path_for(config.db_path)
        snapshot = await loop.run_in_executor(executor, _load_snapshot_info, snapshot_path)
        acceptors = connect_acceptors(config.acceptors, config.max_value_bytes, config.tls)
        options = channel_options(config.max_value_bytes)
        sources = [
            (address, pb_grpc.LearnerServiceStub(tls.aio_channel(address, config.tls, options)))
            for i, address in enumerate(config.learners)
            if i != config.node_id
        ]
        replica = Replica(
            machine,
            acceptors,
            executor,
            bounds=Bounds(
                retain_revisions=config.kv_retain_revisions,
                retain_log_bytes=config.retain_log_bytes,
                quota_bytes=config.quota_bytes,
            ),
            snapshot_path=snapshot_path,
            snapshot=snapshot,
            snapshot_sources=sources,
        )
        replica.start()
        appender = LogAppender(config.proposers, config.max_value_bytes, config.tls)
        kv = KvServicer(replica, appender, config.max_value_bytes)
    servicer = LearnerServicer(config, replica)
    servicer.kv = kv

    def register(server: grpc.aio.Server) -> None:
        pb_grpc.add_LearnerServiceServicer_to_server(servicer, server)
        if kv is not None:
            pb_grpc.add_KvServiceServicer_to_server(kv, server)
        operator_server.add_to_server(LearnerView(servicer), server)

    extra = ((KV_SERVICE_NAME,) if kv is not None else ()) + (operator_server.SERVICE_NAME,)
    role = await start_server(config, LEARNER_SERVICE_NAME, register, extra_services=extra)
    servicer.role_server = role
    if replica is not None:

        async def quota_changed(over: bool) -> None:
            # Reads go on: only the health of writes turns NOT_SERVING.
            await role.set_health(KV_WRITES_HEALTH, not over)

        replica.on_quota = quota_changed
        await role.set_health(KV_WRITES_HEALTH, True)

        async def apply_failed(_reason: str) -> None:
            # A learner that cannot apply the log must not look healthy.
            await role.set_serving(False)

        replica.on_failure = apply_failed
        replica.repair = functools.partial(_repair, kv.appender if kv is not None else None)
        if replica.failure is not None:
            await role.set_serving(False)
    get_logger().info(
        "learner serving", address=config.listen, port=role.port, acceptors=config.acceptors
    )
    return role, servicer


def _load_snapshot_info(path: Path) -> SnapshotInfo | None:
    """This learner's snapshot, checked whole. A damaged one is set aside
    (renamed, not trusted): the store itself is the learner's state, the
    snapshot only what it offers others and reports as its snapshot index."""
    try:
        loaded = snapshot_file.load(path)
    except (OSError, InvalidSnapshot) as exc:
        aside = path.with_name(path.name + ".damaged")
        get_logger().error(
            "snapshot is damaged; set aside, a new one comes with the next",
            path=str(path),
            moved_to=str(aside),
            error=str(exc),
        )
        with contextlib.suppress(OSError):
            path.replace(aside)
        return None
    return None if loaded is None else loaded[0]


async def _repair(appender: LogAppender | None, instance: int) -> bytes | None:
    """Propose the no-op for ``instance`` through the proposers in turn and
    return the value chosen there (None if no proposer could say)."""
    if appender is None:
        return None
    request = pb.ProposeRequest(
        instance=instance, value=log_entry.NOOP, space=pb.INSTANCE_SPACE_LOG
    )
    for address in appender.proposers:
        try:
            reply = await appender.proposer_stub(address).Propose(request, timeout=3.0)
        except grpc.aio.AioRpcError as exc:
            get_logger().debug("repair propose failed", error=describe_rpc_error(address, exc))
            continue
        return bytes(reply.value)
    return None
