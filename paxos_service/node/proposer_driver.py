"""The single-decree proposer's driver: a :class:`roles.Proposer` per proposal, over gRPC.

The driver is the only place where the single-decree proposer meets time and
the network: it performs the state machine's effects (SendToAcceptors -> one
RPC per acceptor, SetTimer -> a wake-up, Chosen -> Decide to learners) and
feeds every reply and timer back in. Calls for the same instance on this
proposer are serialised, so this proposer never has two ballots of its own in
flight for one instance. The gRPC servicer that calls it is
:class:`paxos_service.servers.proposer.ProposerServicer`.
"""

from __future__ import annotations

import asyncio
import functools
import random
from collections.abc import Callable

import grpc

from paxos_service.core import clock, metrics, runtime
from paxos_service.core.config import ProposerConfig
from paxos_service.core.logger import get_logger
from paxos_service.transport import tls, wire
from paxos_service.transport.channels import channel_options
from paxos_service.transport.peers import AcceptorPeer, connect_acceptors, describe_rpc_error
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import (
    Accept,
    Chosen,
    Effect,
    GaveUp,
    Phase,
    Prepare,
    Promise,
    Proposer,
    ProtocolError,
    Reject,
    SendToAcceptors,
    SetTimer,
    majority,
)
from roles import ProposerConfig as RoleProposerConfig
from roles.messages import Accepted, Decide

Reply = Promise | Accepted | Reject


class QuorumUnavailable(Exception):
    """Too few acceptors answered to make progress."""


class ProposalFailed(Exception):
    """Enough acceptors answered, but no value was chosen before the deadline."""


class ProposerDriver:
    """Runs proposals for one proposer id against a fixed acceptor set."""

    def __init__(
        self,
        config: ProposerConfig,
        *,
        rng: random.Random | None = None,
        clock: Callable[[], float] = clock.now,
    ) -> None:
        self.config = config
        self.acceptors = connect_acceptors(config.acceptors, config.max_value_bytes, config.tls)
        self.learners = [
            pb_grpc.LearnerServiceStub(
                tls.aio_channel(a, config.tls, channel_options(config.max_value_bytes))
            )
            for a in config.learners
        ]
        self.role_config = RoleProposerConfig(phase_timeout=config.phase_timeout)
        self._rng = rng or runtime.rng()
        self._clock = clock
        #: Per (space, instance) lock and the number of calls holding or awaiting it.
        self._locks: dict[tuple[bool, int], tuple[asyncio.Lock, list[int]]] = {}
        #: Highest round seen per (space, instance), so a retry starts above it.
        self._rounds: dict[tuple[bool, int], int] = {}
        self._background: set[asyncio.Task[None]] = set()
        self._logger = get_logger()

    async def propose(
        self, instance: int, value: bytes, deadline: float, *, log: bool = False
    ) -> Chosen:
        """Run single-decree Paxos on ``instance``: a single-decree instance,
        or with ``log`` the log's (a learner repairing a hole with the no-op)."""
        key = (log, instance)
        lock, users = self._locks.setdefault(key, (asyncio.Lock(), [0]))
        users[0] += 1
        try:
            async with lock:
                return await self._run(instance, value, deadline, log)
        finally:
            users[0] -= 1
            if users[0] == 0:  # keep the dict small: drop idle locks
                del self._locks[key]

    async def close(self) -> None:
        for task in list(self._background):
            task.cancel()
        await asyncio.gather(*self._background, return_exceptions=True)
        for peer in self.acceptors:
            await peer.channel.close(grace=None)

    async def _run(self, instance: int, value: bytes, deadline: float, log: bool) -> Chosen:
        proposer = Proposer(
            proposer_id=self.config.node_id,
            instance=instance,
            value=value,
            acceptor_ids=frozenset(p.acceptor_id for p in self.acceptors),
            rng=self._rng,
            deadline=deadline,
            config=self.role_config,
            min_round=self._rounds.get((log, instance), 0),
        )
        inbox: asyncio.Queue[Reply] = asyncio.Queue()
        # A dict, not a set: tasks are cancelled in the order they were sent
        # (a set would use memory-address order, and a seed would not replay).
        in_flight: dict[asyncio.Task[None], None] = {}
        answered: set[int] = set()
        timer_at = deadline
        stats = metrics.SINGLE_DECREE
        stats.proposals.inc()
        phase_started = 0.0  # when the current phase's SendToAcceptors went out
        try:
            effects: list[Effect] = proposer.start(self._clock())
            while True:
                for effect in effects:
                    if isinstance(effect, SendToAcceptors):
                        self._logger.debug(
                            "broadcast",
                            message=type(effect.message).__name__,
                            instance=instance,
                            ballot=str(effect.message.ballot),
                        )
                        now = self._clock()
                        if isinstance(effect.message, Accept):  # phase 1 is through
                            stats.phase1.observe(now - phase_started)
                        phase_started = now
                        for peer in self.acceptors:
                            task = asyncio.create_task(
                                self._send(peer, effect.message, log, inbox, answered, deadline)
                            )
                            in_flight[task] = None
                            task.add_done_callback(functools.partial(in_flight.pop))
                    elif isinstance(effect, SetTimer):
                        timer_at = effect.at
                    elif isinstance(effect, Chosen):
                        stats.phase2.observe(self._clock() - phase_started)
                        stats.chosen.inc()
                        self._rounds.pop((log, instance), None)
                        self._announce(effect.decide, log)
                        return effect
                    elif isinstance(effect, GaveUp):
                        self._rounds[(log, instance)] = proposer.highest_round_seen
                        raise self._failure(effect, answered)
                try:
                    reply = await asyncio.wait_for(
                        inbox.get(), timeout=max(0.0, timer_at - self._clock())
                    )
                except TimeoutError:
                    # Our timer fired, so its time has come, even if the clock
                    # reads a hair earlier (asyncio runs timers due within its
                    # resolution): otherwise we would wait 0 s again, and spin.
                    effects = proposer.on_timer(max(self._clock(), timer_at))
                    continue
                phase = proposer.phase
                try:
                    effects = proposer.on_message(reply, self._clock())
                except ProtocolError as exc:
                    self._logger.error("bad reply from acceptor", error=str(exc))
                    effects = []
                if isinstance(reply, Reject):
                    stats.rejections.inc()
                    if proposer.phase is Phase.BACKING_OFF and phase is not Phase.BACKING_OFF:
                        stats.preemptions.inc()  # a higher ballot: retry above it
        finally:
            for task in list(in_flight):
                task.cancel()

    async def _send(
        self,
        peer: AcceptorPeer,
        message: Prepare | Accept,
        log: bool,
        inbox: asyncio.Queue[Reply],
        answered: set[int],
        deadline: float,
    ) -> None:
        timeout = max(0.01, min(self.config.phase_timeout, deadline - self._clock()))
        try:
            reply: Reply
            if isinstance(message, Prepare):
                response = await peer.stub.Prepare(
                    pb.PrepareRequest(
                        prepare=wire.prepare_to_pb(message), space=wire.space_of(log)
                    ),
                    timeout=timeout,
                )
                reply = wire.prepare_response_from_pb(response)
            else:
                accept_response = await peer.stub.Accept(
                    pb.AcceptRequest(accept=wire.accept_to_pb(message), space=wire.space_of(log)),
                    timeout=timeout,
                )
                reply = wire.accept_response_from_pb(accept_response)
        except grpc.aio.AioRpcError as exc:
            peer.last_error = describe_rpc_error(peer.address, exc)
            self._logger.debug("acceptor call failed", error=peer.last_error)
            return
        except (wire.WireError, ValueError) as exc:
            peer.last_error = f"{peer.address}: malformed reply: {exc}"
            self._logger.error("malformed reply from acceptor", error=peer.last_error)
            return
        if reply.acceptor_id != peer.acceptor_id:
            peer.last_error = (
                f"{peer.address} answers as acceptor {reply.acceptor_id} but is listed as "
                f"acceptor {peer.acceptor_id}: list acceptors in id order in --acceptors"
            )
            self._logger.error("acceptor id mismatch", error=peer.last_error)
            return
        peer.last_error = None
        answered.add(peer.acceptor_id)
        inbox.put_nowait(reply)

    def _failure(self, gave_up: GaveUp, answered: set[int]) -> Exception:
        needed = majority(len(self.acceptors))
        if len(answered) < needed:
            down = [
                p.last_error or f"{p.address}: no answer"
                for p in self.acceptors
                if p.acceptor_id not in answered
            ]
            return QuorumUnavailable(
                f"no quorum of acceptors reachable for instance {gave_up.instance}: "
                f"{len(answered)} of {len(self.acceptors)} answered, {needed} needed; "
                + "; ".join(down)
            )
        return ProposalFailed(f"instance {gave_up.instance}: {gave_up.reason}")

    def _announce(self, decide: Decide, log: bool) -> None:
        """Tell the learners, without making the client wait for them."""
        if not self.learners:
            return
        task = asyncio.create_task(self._send_decide(decide, log))
        self._background.add(task)
        task.add_done_callback(self._background.discard)

    async def _send_decide(self, decide: Decide, log: bool) -> None:
        request = pb.DecideRequest(decide=wire.decide_to_pb(decide), space=wire.space_of(log))
        results = await asyncio.gather(
            *(stub.Decide(request, timeout=2.0) for stub in self.learners),
            return_exceptions=True,
        )
        for address, result in zip(self.config.learners, results, strict=True):
            if isinstance(result, BaseException):
                self._logger.warning(
                    "could not tell learner",
                    instance=decide.instance,
                    error=describe_rpc_error(address, result),
                )
