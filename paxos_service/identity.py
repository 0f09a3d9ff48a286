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
import enum
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import grpc

from paxos_service import clock
from paxos_service import tls as tls_channels
from paxos_service.config import ConfigError, TlsFiles
from paxos_service.log import get_logger
from paxos_service.peers import AcceptorPeer, describe_rpc_error
from paxos_service.server import channel_options
from paxos_service.storage import IdentityStorage, StorageError
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import Ballot
from roles.recovery import (
    Introduction,
    JoinVerdict,
    RecoveryInfo,
    RecoveryPlan,
    RecoveryRefused,
    Status,
    decide_join,
    plan_recovery,
)

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
#: What ``paxos acceptor recover`` waits by default before reading its peers.
DEFAULT_SETTLE = 30.0
_SMALL = 64 * 1024


class Standing(enum.Enum):
    """Whether this acceptor process votes, and if not, why."""

    JOINING = "joining"
    #: An existing database, waiting for a peer to confirm its incarnation.
    CONFIRMING = "confirming"
    VOTING = "voting"
    WIPED = "wiped"
    RECOVERING = "recovering"
    RETIRED = "retired"
    #: Storage failed while recording an identity; restart once it is healthy.
    FAILED = "failed"


STANDING_TO_PB: dict[Standing, pb.AcceptorStatus.ValueType] = {
    Standing.JOINING: pb.ACCEPTOR_STATUS_JOINING,
    # The proto has no value of its own for it (yet): not voting, waiting for peers.
    Standing.CONFIRMING: pb.ACCEPTOR_STATUS_JOINING,
    Standing.VOTING: pb.ACCEPTOR_STATUS_VOTING,
    Standing.WIPED: pb.ACCEPTOR_STATUS_WIPED,
    Standing.RECOVERING: pb.ACCEPTOR_STATUS_RECOVERING,
    Standing.RETIRED: pb.ACCEPTOR_STATUS_RETIRED,
    Standing.FAILED: pb.ACCEPTOR_STATUS_STORAGE_FAILED,
}


def recover_command(acceptor_id: int, db_path: Path, acceptors: Sequence[str]) -> str:
    """The recovery command for the operator, ready to paste."""
    return (
        f"paxos acceptor recover --id {acceptor_id} --db {db_path} "
        f"--acceptors {','.join(acceptors)}"
    )


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
    standing: Standing = Standing.JOINING
    reason: str = ""
    members: dict[int, str] = field(default_factory=dict)
    _task: asyncio.Task[None] | None = None
    _peers: list[AcceptorPeer] = field(default_factory=list)
    _warned: set[str] = field(default_factory=set)

    @property
    def voting(self) -> bool:
        return self.standing is Standing.VOTING

    @property
    def incarnation(self) -> str:
        return self.storage.incarnation

    def refusal(self) -> str:
        """Why this acceptor does not vote, for an UNAVAILABLE status."""
        return f"acceptor {self.acceptor_id} is {self.standing.value}: {self.reason}"

    async def start(self) -> None:
        """Load what the file says: vote, refuse, or join (see :meth:`launch`)."""
        self.members = await self.run_storage(self.storage.load_members)
        log = get_logger()
        status = self.storage.status
        if self.acceptors and self.acceptor_id >= len(self.acceptors):
            raise ConfigError(
                f"acceptor {self.acceptor_id} has no entry in --acceptors "
                f"({len(self.acceptors)} entries): acceptor i must be the i-th"
            )
        if status is Status.RECOVERING:
            self._set(
                Standing.RECOVERING,
                "`paxos acceptor recover` did not finish (not every peer has heard of "
                f"the new incarnation {self.incarnation}); run it again: "
                + recover_command(self.acceptor_id, self.db_path, self.acceptors or ["..."]),
            )
            log.critical("acceptor does not vote", reason=self.reason)
            return
        if status is Status.RETIRED:
            self._set(
                Standing.RETIRED,
                f"another incarnation of acceptor {self.acceptor_id} exists (its peers know "
                f"another one than this file's {self.incarnation}): this file must never "
                "vote again. To bring this id back here, recover it: "
                + recover_command(self.acceptor_id, self.db_path, self.acceptors or ["..."]),
            )
            log.critical("acceptor does not vote", reason=self.reason)
            return
        if not self.acceptors:
            log.warning(
                "identity checks are off: no --acceptors (PAXOS_ACCEPTORS), so this acceptor "
                "cannot tell whether it lost its data; a new database votes at once"
            )
            if status is Status.JOINING:
                await self.run_storage(self.storage.set_status, Status.VOTING)
            self._set(Standing.VOTING, "")
            return
        self._peers = connect_peers(self.acceptors, self.tls, skip=self.acceptor_id)
        if status is Status.JOINING and not self._peers:
            # The only acceptor: nobody else can remember it.
            await self.run_storage(self.storage.set_status, Status.VOTING)
            status = Status.VOTING
        if status is Status.JOINING:
            self._set(Standing.JOINING, "waiting for every other acceptor to vouch that it is new")
        elif not self._peers:
            self._set(Standing.VOTING, "")
        else:
            # Check first, then vote: this volume may be an old copy of an id
            # recovered elsewhere (see the module docstring).
            self._set(
                Standing.CONFIRMING,
                "waiting for a peer acceptor to confirm its incarnation before it votes",
            )
            await self._confirm_round({}, STARTUP_CHECK_TIMEOUT)

    def launch(self) -> None:
        """Start introducing this acceptor to its peers (once the server is up,
        so that peers joining at the same time get answers too)."""
        if not self._peers or self._task is not None:
            return
        if self.standing is Standing.JOINING:
            self._task = asyncio.create_task(self._guarded(self._join), name="identity-join")
        elif self.standing is Standing.CONFIRMING:
            self._task = asyncio.create_task(self._guarded(self._confirm), name="identity-confirm")
        elif self.standing is Standing.VOTING:
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

    def _set(self, standing: Standing, reason: str) -> None:
        self.standing = standing
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
                Standing.FAILED,
                f"its storage failed ({exc}); restart it once storage is healthy",
            )
            get_logger().critical("acceptor stops voting", reason=self.reason)
            await self._announce()

    async def _join(self) -> None:
        """A new database: vote once every peer vouched that the id is new."""
        log = get_logger()
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
                    Standing.WIPED,
                    f"{decision.reason}. It must not vote as its old self. Once every other "
                    "acceptor is up, run: "
                    + recover_command(self.acceptor_id, self.db_path, self.acceptors)
                    + " (see README.md, 'The durability contract', and k8s/README.md, "
                    "'Replace a failed acceptor'), then restart this acceptor",
                )
                log.critical(self.reason, incarnation=self.incarnation)
                await self._announce()
                return
            if decision.verdict is JoinVerdict.VOTE:
                stored = await self.run_storage(
                    lambda: self.storage.set_status(
                        Status.VOTING, expect_incarnation=self.incarnation
                    )
                )
                if not stored:
                    self._set(
                        Standing.RECOVERING,
                        f"{self.db_path} was rewritten by `paxos acceptor recover` while this "
                        "process ran; restart it",
                    )
                    log.critical("acceptor does not vote", reason=self.reason)
                    return
                self._set(Standing.VOTING, "")
                log.info("acceptor votes: " + decision.reason, incarnation=self.incarnation)
                await self._announce()
                await self._watch()
                return
            self.reason = decision.reason + _why(errors, decision.missing)
            if clock.now() - last_progress >= PROGRESS_INTERVAL:
                last_progress = clock.now()
                log.info("acceptor is joining: " + self.reason)
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_INTERVAL)

    async def _confirm(self) -> None:
        """An existing database that no peer has answered yet: keep asking;
        vote once one confirms, retire if one knows another incarnation."""
        errors: dict[int, str] = {}
        delay = 0.1
        last_progress = clock.now()
        while self.standing is Standing.CONFIRMING:
            await asyncio.sleep(delay)
            delay = min(delay * 2, MAX_RETRY_INTERVAL)
            await self._confirm_round(errors, INTRODUCE_TIMEOUT)
            if self.standing is Standing.CONFIRMING and (
                clock.now() - last_progress >= PROGRESS_INTERVAL
            ):
                last_progress = clock.now()
                get_logger().info("acceptor does not vote yet: " + self.reason)
        if self.standing is Standing.VOTING:
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
            self._set(Standing.VOTING, "")
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
            Standing.RETIRED,
            f"two processes claim acceptor {self.acceptor_id}: its peers know another "
            f"incarnation ({known}) than this file's ({self.incarnation}), so it was recovered "
            "elsewhere. This one stops voting for good",
        )
        get_logger().critical(self.reason)
        await self._announce()
        try:
            await self.run_storage(
                lambda: self.storage.set_status(Status.RETIRED, expect_incarnation=self.incarnation)
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


def connect_peers(
    acceptors: Sequence[str],
    tls: TlsFiles | None,
    *,
    skip: int | None = None,
    only: int | None = None,
) -> list[AcceptorPeer]:
    """Channels to the acceptors at their positions (ids), but ``skip``, or
    only ``only``. Identity messages are small: default message limits."""
    peers = []
    for acceptor_id, address in enumerate(acceptors):
        if acceptor_id == skip or (only is not None and acceptor_id != only):
            continue
        channel = tls_channels.aio_channel(address, tls, channel_options(_SMALL))
        peers.append(
            AcceptorPeer(acceptor_id, address, channel, pb_grpc.AcceptorServiceStub(channel))
        )
    return peers


def _why(errors: dict[int, str], missing: Sequence[int]) -> str:
    reasons = [errors[p] for p in missing if p in errors]
    return f" ({'; '.join(reasons)})" if reasons else ""


# Recovery ---------------------------------------------------------------------


@dataclass(frozen=True)
class RecoveryResult:
    incarnation: str
    plan: RecoveryPlan
    peers: dict[int, str]


def standing_name(status: int) -> str:
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
        standing=standing_name(reply.status),
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
    if storage.status is Status.VOTING:
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
        incarnation = _new_incarnation()
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
            lambda: storage.set_status(Status.VOTING, expect_incarnation=incarnation)
        )
        if not stored:
            raise RecoveryError("the database changed under the recovery; run it again")
        return RecoveryResult(incarnation, plan, members)
    finally:
        for peer in [*peers, target]:
            await peer.channel.close(grace=None)


def _new_incarnation() -> str:
    from paxos_service.sqlite_storage import new_incarnation

    return new_incarnation()


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
