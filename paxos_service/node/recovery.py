"""Offline recovery of a lost acceptor: ``paxos acceptor recover``.

An acceptor that lost its database must not vote as its old self (see
:mod:`paxos_service.node.identity`, which keeps it from doing so at run time).
This module is how an operator brings that id back.

**Recovery** (``paxos acceptor recover``, :func:`recover`): an operator rebuilds
a lost acceptor N from every other acceptor; all must be reachable and voting,
or it refuses and names the ones that are not. From each it reads the highest
ballot promised (per instance or range) and the highest instance with an
accepted value (``GetRecoveryInfo``). It writes a fresh database for N with a
new incarnation, a range promise from instance 1 at the highest ballot seen
(the *floor*), and a no-vote-through instance M, the highest accepted instance
seen: N never votes on an instance <= M (UNAVAILABLE "... does not vote on
instances <= M"), nor promises a range from one. Then it tells every peer the
new incarnation with ``Introduce(replace=True)``, the one use of ``replace``.

Why that is safe:

* A value chosen with the lost acceptor's vote was accepted by a majority,
  which holds at least one other acceptor. That one still has it (or, if it was
  itself recovered since, its own M covers the instance), so the instance is
  <= M, and the rebuilt acceptor never votes there. The other acceptors keep
  that value chosen, as Paxos does when one acceptor is down.
* A ballot the lost acceptor promised only matters once a proposer counts it in
  a majority of promises, and every majority holds a live acceptor that
  promised it too. So the floor is at least every such ballot, and the rebuilt
  acceptor accepts nothing below it: it keeps the promises that mattered.
* Instances above M: no value was chosen there with the lost acceptor's vote,
  so forgetting what it accepted there is like a message that was lost.

**The assumption behind that argument.** Both bullets hold for majorities that
were complete when the peers were read. A proposer could, in principle, count
a promise the lost acceptor made *before* it was lost together with a peer's
promise made *after* the read (a Prepare that reached the peer very late).
Then the floor does not cover that ballot, and the rebuilt acceptor may accept
a lower one that the proposer's phase 1 did not see. (The same goes for an
Accepted, or a learner's read, counted together with one given after the
read.) No caller here keeps one round of votes open for long: a proposer's
phase waits at most ``phase_timeout`` (0.5 to 1 s, a leader's phase 2 four
times that) and a learner's read 2 s, then they start over. So ``recover``
waits ``--settle`` seconds (30 by default) before it reads the peers, and
nothing the lost acceptor sent is still being counted by anyone. (The old
process must be gone by then; see below.) Ruling this out without timing
needs the proposers to tag every reply with the replier's incarnation and to
drop mixed majorities (crash vectors, Michael et al., DISC 2017): a protocol
change, not done here.

**What this does not catch.** A database restored from an *old backup* of the
same acceptor carries the incarnation its peers know, so it passes as itself
and forgets what it did after the backup: never restore a single acceptor
(k8s/README.md says how to restore all of them). And an old process that is
still running, cut off by a partition, votes until its next re-check reaches
a peer; make sure it is gone before recovering its id.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path

import grpc

from paxos_service.core.config import TlsFiles
from paxos_service.node.acceptor_channels import connect_peers
from paxos_service.storage.contract import IdentityStorage
from paxos_service.storage.sqlite import new_incarnation
from paxos_service.transport.peers import AcceptorPeer, describe_rpc_error
from paxos_service.v1 import paxos_pb2 as pb
from roles import Ballot
from roles.recovery import (
    AcceptorStatus,
    RecoveryInfo,
    RecoveryPlan,
    RecoveryRefused,
    plan_recovery,
)

#: What ``paxos acceptor recover`` waits by default before reading its peers.
DEFAULT_SETTLE = 30.0


def recover_command(acceptor_id: int, db_path: Path, acceptors: Sequence[str]) -> str:
    """The recovery command for the operator, ready to paste."""
    return (
        f"paxos acceptor recover --id {acceptor_id} --db {db_path} "
        f"--acceptors {','.join(acceptors)}"
    )


@dataclass(frozen=True)
class RecoveryResult:
    """What a finished recovery wrote: the new incarnation, the plan it
    applied, and the incarnations it recorded for the peers."""

    incarnation: str
    plan: RecoveryPlan
    peers: dict[int, str]


def status_name(status: int) -> str:
    """``ACCEPTOR_STATUS_STORAGE_FAILED`` -> "storage_failed"."""
    try:
        name: str = pb.AcceptorStatus.Name(status)  # type: ignore[arg-type]
    except ValueError:
        return f"in status {status}"
    return name.removeprefix("ACCEPTOR_STATUS_").lower()


def recovery_info_from_pb(reply: pb.GetRecoveryInfoResponse) -> RecoveryInfo:
    return RecoveryInfo(
        peer_id=reply.acceptor_id,
        incarnation=reply.incarnation,
        voting=reply.status == pb.ACCEPTOR_STATUS_VOTING,
        status=status_name(reply.status),
        promised_ballot=Ballot(reply.promised_ballot.round, reply.promised_ballot.proposer_id),
        highest_accepted_instance=reply.highest_accepted_instance,
        no_vote_through=reply.no_vote_through,
        known_incarnation=reply.known_incarnation,
    )


class RecoveryError(RuntimeError):
    """Recovery refused or failed; the message says why and what to do."""


async def recover(
    *,
    acceptor_id: int,
    storage: IdentityStorage,
    cluster_id: str,
    acceptors: Sequence[str],
    settle: float = DEFAULT_SETTLE,
    timeout: float = 5.0,
    say: Callable[[str], None] = print,
    tls: TlsFiles | None = None,
) -> RecoveryResult:
    """Rebuild acceptor ``acceptor_id`` in ``storage`` (already open) from every
    other acceptor; see the module docstring. Raises :class:`RecoveryError`."""
    if len(acceptors) < 2:
        raise RecoveryError(
            "a single acceptor cannot be recovered: no other acceptor remembers what it promised"
        )
    if acceptor_id >= len(acceptors):
        raise RecoveryError(
            f"acceptor {acceptor_id} has no entry in --acceptors ({len(acceptors)} entries)"
        )
    if storage.status is AcceptorStatus.VOTING:
        raise RecoveryError(
            f"acceptor {acceptor_id}'s database {getattr(storage, 'path', '')} is voting "
            f"(incarnation {storage.incarnation}): it has not lost its data, so there is "
            "nothing to recover. If its data really is lost or stale (an old backup), stop "
            "the acceptor, delete the file (and its -wal and -shm), and run this again"
        )
    peers = connect_peers(acceptors, tls, skip=acceptor_id)
    (target,) = connect_peers(acceptors, tls, only=acceptor_id)
    try:
        # A first look, so a missing peer is reported before the wait.
        infos = await _gather(peers, acceptor_id, cluster_id, timeout)
        _plan(acceptor_id, peers, infos)
        await _check_target(target, acceptor_id, cluster_id, infos, timeout)
        if settle > 0:
            say(
                f"waiting {settle:g}s so that no vote of the lost acceptor {acceptor_id} is "
                "still in flight ..."
            )
            await asyncio.sleep(settle)
        infos = await _gather(peers, acceptor_id, cluster_id, timeout)
        plan = _plan(acceptor_id, peers, infos)
        incarnation = new_incarnation()
        members = {p: info.incarnation for p, info in infos.items()}
        await asyncio.to_thread(storage.apply_recovery, incarnation, plan, members)
        say(
            f"rebuilt acceptor {acceptor_id}: incarnation {incarnation}, promised {plan.floor} "
            f"for every instance, never votes on instances <= {plan.no_vote_through}"
        )
        failed = []
        for peer in peers:
            request = pb.IntroduceRequest(
                acceptor_id=acceptor_id,
                cluster_id=cluster_id,
                incarnation=incarnation,
                replace=True,
            )
            try:
                await peer.stub.Introduce(request, timeout=timeout)
            except grpc.aio.AioRpcError as exc:
                failed.append(describe_rpc_error(peer.address, exc))
        if failed:
            raise RecoveryError(
                "the rebuilt database is written, but not every peer has heard of its new "
                f"incarnation ({'; '.join(failed)}); it will not vote until you run this again"
            )
        stored = await asyncio.to_thread(
            lambda: storage.set_status(AcceptorStatus.VOTING, expect_incarnation=incarnation)
        )
        if not stored:
            raise RecoveryError("the database changed under the recovery; run it again")
        return RecoveryResult(incarnation, plan, members)
    finally:
        for peer in [*peers, target]:
            await peer.channel.close(grace=None)


async def _gather(
    peers: list[AcceptorPeer], acceptor_id: int, cluster_id: str, timeout: float
) -> dict[int, RecoveryInfo]:
    request = pb.GetRecoveryInfoRequest(cluster_id=cluster_id, acceptor_id=acceptor_id)
    replies = await asyncio.gather(
        *(p.stub.GetRecoveryInfo(request, timeout=timeout) for p in peers),
        return_exceptions=True,
    )
    infos: dict[int, RecoveryInfo] = {}
    unreachable = []
    for peer, reply in zip(peers, replies, strict=True):
        if isinstance(reply, BaseException):
            unreachable.append(
                f"acceptor {peer.acceptor_id} ({describe_rpc_error(peer.address, reply)})"
            )
            continue
        if reply.acceptor_id != peer.acceptor_id:
            unreachable.append(
                f"acceptor {peer.acceptor_id} ({peer.address} says it is acceptor "
                f"{reply.acceptor_id}: check --acceptors)"
            )
            continue
        infos[peer.acceptor_id] = recovery_info_from_pb(reply)
    if unreachable:
        raise RecoveryError(
            "recovery needs every other acceptor, and these did not answer: "
            + "; ".join(unreachable)
        )
    return infos


def _plan(
    acceptor_id: int, peers: list[AcceptorPeer], infos: dict[int, RecoveryInfo]
) -> RecoveryPlan:
    try:
        return plan_recovery(acceptor_id, [p.acceptor_id for p in peers], infos)
    except RecoveryRefused as exc:
        raise RecoveryError(str(exc)) from exc


async def _check_target(
    target: AcceptorPeer,
    acceptor_id: int,
    cluster_id: str,
    infos: dict[int, RecoveryInfo],
    timeout: float,
) -> None:
    """Refuse to recover an acceptor that is up, voting, and known to its peers
    by the incarnation it runs with: it lost nothing (a wrong --id?)."""
    request = pb.GetRecoveryInfoRequest(cluster_id=cluster_id, acceptor_id=acceptor_id)
    with contextlib.suppress(grpc.aio.AioRpcError):
        reply = await target.stub.GetRecoveryInfo(request, timeout=timeout)
        known = {info.known_incarnation for info in infos.values()}
        if (
            reply.acceptor_id == acceptor_id
            and reply.status == pb.ACCEPTOR_STATUS_VOTING
            and known == {reply.incarnation}
        ):
            raise RecoveryError(
                f"acceptor {acceptor_id} at {target.address} is voting, with the incarnation "
                f"its peers know ({reply.incarnation}): it has not lost its data. Check --id"
            )
