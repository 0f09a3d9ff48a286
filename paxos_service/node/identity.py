"""Identity safety: an acceptor that lost its storage must not vote as its old self.

An acceptor's vote is a promise about the future ("I will not accept a ballot
below b") and a record of the past ("I accepted v under b"). An acceptor whose
volume was wiped, and that starts again with an empty database under its old
id, has broken both. Majority {0, 1} may have chosen v; if 1 comes back empty,
majority {1, 2} can choose w. So a new database must prove it is new.

**Incarnations.** Every acceptor database carries an *incarnation*: a random id
made when the file is created, and never changed after (except by recovery,
below). Every acceptor durably records, in its ``members`` table, the
incarnation it has seen for each peer acceptor id. Acceptors learn their
peers from ``--acceptors`` (``PAXOS_ACCEPTORS``), where position i is id i.
Without it the checks are off (one node, development), and a warning says so.

**Introduce.** ``Introduce(acceptor_id, cluster_id, incarnation)`` asks a peer
what incarnation it knows for that id. If none, it records this one (committed
before it answers) and answers "none". A wrong cluster id gets
FAILED_PRECONDITION. It is answered whether or not the callee votes, so that
acceptors that all start together can vouch for each other.

**At start** (``IdentityGuard``; the decisions are :mod:`roles.recovery`):

* An existing database (status VOTING) checks first, then votes. Before its
  server answers anything, it introduces itself to every peer at once, for at
  most ``STARTUP_CHECK_TIMEOUT``:

  - any peer that answers knows a *different* incarnation for its id: another
    process holds this id (it was recovered elsewhere, or this volume is an old
    copy reattached). It never votes (RETIRED, persisted) and logs why.
  - at least one peer answered and none knows another incarnation: it votes
    (CONFIRMING -> VOTING). One answer is enough: ``recover`` makes the new
    incarnation vote only once *every* peer has recorded it, so if our id had
    been recovered and the recovered one voted, whichever peer answers would
    know it. (A peer that knew no incarnation for the id records this one as
    it answers, as in a cluster that ran without identity tracking.)
  - no peer answered in time: it starts serving, **not voting** (standing
    CONFIRMING: Prepare, Accept and PrepareRange get UNAVAILABLE "acceptor N
    is confirming: ...", readiness NOT_SERVING), and keeps introducing itself
    in the background until a peer answers, then decides as above. So a stale
    volume never votes, not even for its very first request.

  Once voting, it introduces itself to every peer again every
  ``RECHECK_INTERVAL``; a peer that knows another incarnation makes it stop
  voting for good (RETIRED), as above.

  *When no peer is reachable* it does not vote, however long that lasts; there
  is no timeout after which it votes anyway. That keeps safety: a stale volume
  cut off from its peers, but reachable by a proposer that also reaches a peer
  (partitions need not be symmetric), could otherwise join a majority with a
  vote its id's new incarnation does not know about. It costs no liveness in a
  whole-cluster cold start: every acceptor answers ``Introduce`` whether or not
  it votes, so acceptors that start together confirm each other as soon as any
  two are up, and a majority votes as soon as a majority is up (each voter
  needs one peer, and a majority of 3 or more holds one). An acceptor that
  reaches no peer at all could, with symmetric reachability, not be part of
  any majority anyway.
* A new database (no file: status JOINING) does not vote: Prepare, Accept and
  PrepareRange get UNAVAILABLE "acceptor N is joining: ...", and health for
  ``paxos_service.v1.AcceptorService`` (the readiness probe) is NOT_SERVING,
  while ``liveness`` stays SERVING. It introduces itself to every peer:

  - any peer knows another incarnation for its id: the id voted before, with a
    file that is gone. It stays not voting (WIPED), logs one critical line
    that says what happened and what to run, and keeps running: a not-ready
    pod that says why is easier to fix than a crash loop.
  - every peer answered and none knew the id: a first boot. It votes
    (VOTING is persisted). While it joins, it also records each peer's own
    incarnation from the answers, so every acceptor that votes knows every
    peer; a peer that has voted and yet never heard of the id therefore means
    a cluster that ran without identity tracking, which counts as WIPED too.
  - some peers have not answered: it keeps asking, and logs who it waits for.
    A fresh acceptor votes only once *every* peer has vouched that it is new:
    the one that is down may be the only one that remembers it.

**Recovery** of a lost acceptor (``paxos acceptor recover``) is in
:mod:`paxos_service.node.recovery`, with the argument for why it is safe.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from paxos_service.core import clock
from paxos_service.core.config import ConfigError, TlsFiles
from paxos_service.core.logger import get_logger
from paxos_service.node.acceptor_channels import connect_peers
from paxos_service.node.recovery import recover_command
from paxos_service.storage.contract import IdentityStorage, StorageError
from paxos_service.transport.peers import AcceptorPeer, describe_rpc_error
from paxos_service.v1 import paxos_pb2 as pb
from roles.recovery import AcceptorStatus, Introduction, JoinVerdict, decide_join

#: A voting acceptor re-introduces itself to every peer this often (seconds),
#: so a process whose id was recovered elsewhere finds out and stops voting.
RECHECK_INTERVAL = 10.0
#: Deadline of one Introduce call.
INTRODUCE_TIMEOUT = 2.0
#: How long an existing database asks its peers at start, before its server
#: starts (not voting if no peer answered by then; it keeps asking).
STARTUP_CHECK_TIMEOUT = 1.0
#: Longest pause between two rounds of introductions to peers that did not answer.
MAX_RETRY_INTERVAL = 2.0
#: A joining acceptor says whom it waits for this often (seconds).
PROGRESS_INTERVAL = 5.0


@dataclass
class IdentityGuard:
    """Decides whether this acceptor votes, and keeps it honest: the
    introductions at start and the periodic re-checks. The servicer asks
    :attr:`voting` before every vote and answers peers' ``Introduce`` through
    :meth:`record_peer`."""

    acceptor_id: int
    cluster_id: str
    db_path: Path
    storage: IdentityStorage
    #: Runs a storage call on the acceptor's one storage thread.
    run_storage: Callable[..., Awaitable[Any]]
    #: Peer addresses in id order, this acceptor's own position included; empty: checks off.
    acceptors: Sequence[str]
    #: Told True/False whenever voting starts or stops (health).
    on_voting_changed: Callable[[bool], Awaitable[None]] | None = None
    #: This acceptor's certificate for dialling its peers; None: plaintext.
    tls: TlsFiles | None = None
    status: AcceptorStatus = AcceptorStatus.JOINING
    reason: str = ""
    members: dict[int, str] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _peers: list[AcceptorPeer] = field(default_factory=list)
    _warned: set[str] = field(default_factory=set)

    @property
    def voting(self) -> bool:
        return self.status is AcceptorStatus.VOTING

    @property
    def incarnation(self) -> str:
        return self.storage.incarnation

    def refusal(self) -> str:
        """Why this acceptor does not vote, for an UNAVAILABLE status."""
        return f"acceptor {self.acceptor_id} is {self.status.value}: {self.reason}"

    async def start(self) -> None:
        """Load what the file says: vote, refuse, or join (see :meth:`launch`)."""
        self.members = await self.run_storage(self.storage.load_members)
        logger = get_logger()
        status = self.storage.status
        if self.acceptors and self.acceptor_id >= len(self.acceptors):
            raise ConfigError(
                f"acceptor {self.acceptor_id} has no entry in --acceptors "
                f"({len(self.acceptors)} entries): acceptor i must be the i-th"
            )
        if status is AcceptorStatus.RECOVERING:
            self._set(
                AcceptorStatus.RECOVERING,
                "`paxos acceptor recover` did not finish (not every peer has heard of "
                f"the new incarnation {self.incarnation}); run it again: "
                + recover_command(self.acceptor_id, self.db_path, self.acceptors or ["..."]),
            )
            logger.critical("acceptor does not vote", reason=self.reason)
            return
        if status is AcceptorStatus.RETIRED:
            self._set(
                AcceptorStatus.RETIRED,
                f"another incarnation of acceptor {self.acceptor_id} exists (its peers know "
                f"another one than this file's {self.incarnation}): this file must never "
                "vote again. To bring this id back here, recover it: "
                + recover_command(self.acceptor_id, self.db_path, self.acceptors or ["..."]),
            )
            logger.critical("acceptor does not vote", reason=self.reason)
            return
        if not self.acceptors:
            logger.warning(
                "identity checks are off: no --acceptors (PAXOS_ACCEPTORS), so this acceptor "
                "cannot tell whether it lost its data; a new database votes at once"
            )
            if status is AcceptorStatus.JOINING:
                await self.run_storage(self.storage.set_status, AcceptorStatus.VOTING)
            self._set(AcceptorStatus.VOTING, "")
            return
        self._peers = connect_peers(self.acceptors, self.tls, skip=self.acceptor_id)
        if status is AcceptorStatus.JOINING and not self._peers:
            # The only acceptor: nobody else can remember it.
            await self.run_storage(self.storage.set_status, AcceptorStatus.VOTING)
            status = AcceptorStatus.VOTING
        if status is AcceptorStatus.JOINING:
            self._set(
                AcceptorStatus.JOINING, "waiting for every other acceptor to vouch that it is new"
            )
        elif not self._peers:
            self._set(AcceptorStatus.VOTING, "")
        else:
            # Check first, then vote: this volume may be an old copy of an id
            # recovered elsewhere (see the module docstring).
            self._set(
                AcceptorStatus.CONFIRMING,
                "waiting for a peer acceptor to confirm its incarnation before it votes",
            )
            await self._confirm_round({}, STARTUP_CHECK_TIMEOUT)

    def launch(self) -> None:
        """Start introducing this acceptor to its peers (once the server is up,
        so that peers joining at the same time get answers too)."""
        if not self._peers or self._task is not None:
            return
        if self.status is AcceptorStatus.JOINING:
            self._task = asyncio.create_task(self._guarded(self._join), name="identity-join")
        elif self.status is AcceptorStatus.CONFIRMING:
            self._task = asyncio.create_task(self._guarded(self._confirm), name="identity-confirm")
        elif self.status is AcceptorStatus.VOTING:
            self._task = asyncio.create_task(self._guarded(self._watch), name="identity-watch")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            await asyncio.gather(self._task, return_exceptions=True)
        for peer in self._peers:
            await peer.channel.close(grace=None)

    async def record_peer(self, acceptor_id: int, incarnation: str, replace: bool) -> str:
        """A peer's Introduce: record its incarnation if none is known (or
        always, with ``replace``), durably; return the one known before."""
        known: str = await self.run_storage(
            lambda: self.storage.record_member(acceptor_id, incarnation, replace=replace)
        )
        if replace and known != incarnation:
            self.members[acceptor_id] = incarnation
            get_logger().warning(
                "peer acceptor was recovered: it has a new incarnation",
                peer=acceptor_id,
                incarnation=incarnation,
                previous=known or None,
            )
        elif not known:
            self.members[acceptor_id] = incarnation
            get_logger().info("recorded a peer acceptor", peer=acceptor_id, incarnation=incarnation)
        elif known != incarnation:
            self._warn_once(
                f"stale:{acceptor_id}:{incarnation}",
                "a peer acceptor introduced an incarnation this acceptor does not know it by: "
                "that process is not the one that voted as it, and must not vote",
                peer=acceptor_id,
                introduced=incarnation,
                known=known,
            )
        return known

    # Internals ----------------------------------------------------------

    def _set(self, status: AcceptorStatus, reason: str) -> None:
        self.status = status
        self.reason = reason

    async def _announce(self) -> None:
        if self.on_voting_changed is not None:
            await self.on_voting_changed(self.voting)

    async def _guarded(self, run: Callable[[], Awaitable[None]]) -> None:
        """Run a background loop; a storage failure in it stops voting."""
        try:
            await run()
        except StorageError as exc:
            self._set(
                AcceptorStatus.STORAGE_FAILED,
                f"its storage failed ({exc}); restart it once storage is healthy",
            )
            get_logger().critical("acceptor stops voting", reason=self.reason)
            await self._announce()

    async def _join(self) -> None:
        """A new database: vote once every peer vouched that the id is new."""
        logger = get_logger()
        answers: dict[int, Introduction] = {}
        errors: dict[int, str] = {}
        delay = 0.1
        last_progress = clock.now()
        while True:
            pending = [p for p in self._peers if p.acceptor_id not in answers]
            replies = await asyncio.gather(*(self._introduce(p, errors) for p in pending))
            for peer, reply in zip(pending, replies, strict=True):
                if reply is None:
                    continue
                answers[peer.acceptor_id] = Introduction(
                    peer.acceptor_id, reply.known_incarnation, reply.has_state
                )
                # Know every peer before voting (see the module docstring).
                if peer.acceptor_id not in self.members and reply.incarnation:
                    await self.record_peer(peer.acceptor_id, reply.incarnation, False)
            decision = decide_join(
                self.acceptor_id,
                self.incarnation,
                [p.acceptor_id for p in self._peers],
                answers,
            )
            if decision.verdict is JoinVerdict.WIPED:
                self._set(
                    AcceptorStatus.WIPED,
                    f"{decision.reason}. It must not vote as its old self. Once every other "
                    "acceptor is up, run: "
                    + recover_command(self.acceptor_id, self.db_path, self.acceptors)
                    + " (see README.md, 'The durability contract', and k8s/README.md, "
                    "'Replace a failed acceptor'), then restart this acceptor",
                )
                logger.critical(self.reason, incarnation=self.incarnation)
                await self._announce()
                return
            if decision.verdict is JoinVerdict.VOTE:
                stored = await self.run_storage(
                    lambda: self.storage.set_status(
                        AcceptorStatus.VOTING, expect_incarnation=self.incarnation
                    )
                )
                if not stored:
                    self._set(
                        AcceptorStatus.RECOVERING,
                        f"{self.db_path} was rewritten by `paxos acceptor recover` while this "
                        "process ran; restart it",
                    )
                    logger.critical("acceptor does not vote", reason=self.reason)
                    return
                self._set(AcceptorStatus.VOTING, "")
                logger.info("acceptor votes: " + decision.reason, incarnation=self.incarnation)
                await self._announce()
                await self._watch()
                return
            self.reason = decision.reason + _why(errors, decision.missing)
            if clock.now() - last_progress >= PROGRESS_INTERVAL:
                last_progress = clock.now()
                logger.info("acceptor is joining: " + self.reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_INTERVAL)

    async def _confirm(self) -> None:
        """An existing database that no peer has answered yet: keep asking;
        vote once one confirms, retire if one knows another incarnation."""
        errors: dict[int, str] = {}
        delay = 0.1
        last_progress = clock.now()
        while self.status is AcceptorStatus.CONFIRMING:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_INTERVAL)
            await self._confirm_round(errors, INTRODUCE_TIMEOUT)
            if self.status is AcceptorStatus.CONFIRMING and (
                clock.now() - last_progress >= PROGRESS_INTERVAL
            ):
                last_progress = clock.now()
                get_logger().info("acceptor does not vote yet: " + self.reason)
        if self.status is AcceptorStatus.VOTING:
            await self._announce()
            await self._watch()
        # RETIRED: _retire announced it.

    async def _confirm_round(self, errors: dict[int, str], timeout: float) -> None:
        """Introduce this acceptor to every peer at once and decide: RETIRED,
        VOTING, or still CONFIRMING (nobody answered)."""
        replies = await asyncio.gather(
            *(self._introduce(p, errors, timeout=timeout) for p in self._peers)
        )
        answers = {
            peer.acceptor_id: reply.known_incarnation
            for peer, reply in zip(self._peers, replies, strict=True)
            if reply is not None
        }
        conflicts = {
            p: known for p, known in answers.items() if known and known != self.incarnation
        }
        if conflicts:
            await self._retire(conflicts)
            return
        if answers:
            confirmed = sorted(p for p, known in answers.items() if known == self.incarnation)
            self._set(AcceptorStatus.VOTING, "")
            get_logger().info(
                "acceptor votes: its peers know no other incarnation for it",
                incarnation=self.incarnation,
                confirmed_by=confirmed,
                answered=sorted(answers),
            )
            return
        missing = [p.acceptor_id for p in self._peers]
        self.reason = (
            "waiting for a peer acceptor to confirm its incarnation before it votes (no peer "
            "has answered; it must not vote before one does, in case its id was recovered "
            "elsewhere)" + _why(errors, missing)
        )

    async def _watch(self) -> None:
        """A voting database: make sure every peer knows this incarnation, and
        that none knows another one, now and every RECHECK_INTERVAL."""
        errors: dict[int, str] = {}
        delay = 0.1
        while True:
            replies = await asyncio.gather(*(self._introduce(p, errors) for p in self._peers))
            conflicts = {
                peer.acceptor_id: reply.known_incarnation
                for peer, reply in zip(self._peers, replies, strict=True)
                if reply is not None
                and reply.known_incarnation
                and reply.known_incarnation != self.incarnation
            }
            if conflicts:
                await self._retire(conflicts)
                return
            if all(reply is not None for reply in replies):
                delay = 0.1
                await asyncio.sleep(RECHECK_INTERVAL)
            else:
                await asyncio.sleep(delay)
                delay = min(delay * 2, RECHECK_INTERVAL)

    async def _retire(self, conflicts: dict[int, str]) -> None:
        known = ", ".join(f"acceptor {p} knows {inc}" for p, inc in sorted(conflicts.items()))
        self._set(
            AcceptorStatus.RETIRED,
            f"two processes claim acceptor {self.acceptor_id}: its peers know another "
            f"incarnation ({known}) than this file's ({self.incarnation}), so it was recovered "
            "elsewhere. This one stops voting for good",
        )
        get_logger().critical(self.reason)
        await self._announce()
        try:
            await self.run_storage(
                lambda: self.storage.set_status(
                    AcceptorStatus.RETIRED, expect_incarnation=self.incarnation
                )
            )
        except StorageError as exc:
            get_logger().error("could not record that this acceptor retired", error=str(exc))

    async def _introduce(
        self, peer: AcceptorPeer, errors: dict[int, str], timeout: float = INTRODUCE_TIMEOUT
    ) -> pb.IntroduceResponse | None:
        request = pb.IntroduceRequest(
            acceptor_id=self.acceptor_id, cluster_id=self.cluster_id, incarnation=self.incarnation
        )
        try:
            reply: pb.IntroduceResponse = await peer.stub.Introduce(request, timeout=timeout)
        except grpc.aio.AioRpcError as exc:
            errors[peer.acceptor_id] = describe_rpc_error(peer.address, exc)
            if exc.code() is grpc.StatusCode.FAILED_PRECONDITION:
                self._warn_once(
                    f"refused:{peer.acceptor_id}:{exc.details()}",
                    "a peer acceptor refused this one's introduction",
                    peer=peer.acceptor_id,
                    error=errors[peer.acceptor_id],
                )
            elif exc.code() is grpc.StatusCode.UNIMPLEMENTED:
                self._warn_once(
                    f"old:{peer.acceptor_id}",
                    "a peer acceptor runs a version without identity tracking; upgrade it",
                    peer=peer.acceptor_id,
                    address=peer.address,
                )
            return None
        problem = None
        if reply.acceptor_id != peer.acceptor_id:
            problem = (
                f"{peer.address} is acceptor {reply.acceptor_id}, not {peer.acceptor_id}: "
                "--acceptors must list acceptor i at position i"
            )
        elif reply.cluster_id != self.cluster_id:
            problem = f"{peer.address} belongs to cluster {reply.cluster_id!r}"
        if problem is not None:
            errors[peer.acceptor_id] = problem
            self._warn_once(f"wrong:{peer.acceptor_id}:{problem}", problem)
            return None
        errors.pop(peer.acceptor_id, None)
        return reply

    def _warn_once(self, key: str, message: str, **fields: Any) -> None:
        if key not in self._warned:
            self._warned.add(key)
            get_logger().warning(message, **fields)


def _why(errors: dict[int, str], missing: Sequence[int]) -> str:
    reasons = [errors[p] for p in missing if p in errors]
    return f" ({'; '.join(reasons)})" if reasons else ""
