"""The proposer's replicated-log driver: :class:`roles.leader.Leader` over gRPC.

The driver performs the leader's effects (PrepareRange and Accept to the
acceptors, heartbeats to the other proposers, Decide to the learners, one
timer) and feeds every reply back in, one input at a time on the event loop.
``Append`` calls become ``submit``s; each waits until the instance holding its
command is chosen.

Redirects: a proposer that does not lead answers Append with
FAILED_PRECONDITION and the leader's address in the ``paxos-leader`` trailing
metadata, or UNAVAILABLE while no leader is known. Neither appended anything.
"""

from __future__ import annotations

import asyncio
import functools
import itertools
import random
from collections.abc import Callable
from typing import Any

import grpc

from paxos_service.client.grpc_status import trailing
from paxos_service.core import clock as clocks
from paxos_service.core import log_entry, metrics, runtime
from paxos_service.core.config import ConfigError, ProposerConfig
from paxos_service.core.errors import NotLeaderError, OutcomeUnknownError
from paxos_service.core.logger import get_logger
from paxos_service.transport import tls, wire
from paxos_service.transport.channels import channel_options
from paxos_service.transport.metadata import COMPACTED_THROUGH_METADATA
from paxos_service.transport.peers import AcceptorPeer, describe_rpc_error
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from roles import (
    Accept,
    AnswerHeartbeat,
    AskLeaderContact,
    Assigned,
    BecameLeader,
    Chosen,
    Heartbeat,
    Leader,
    LeaderConfig,
    LeaderEffect,
    OutcomeUnknown,
    PrepareRange,
    PromiseRange,
    ProtocolError,
    Reject,
    Rejected,
    Role,
    SendHeartbeat,
    SendToAcceptors,
    SetTimer,
    SteppedDown,
)


class LogDriver:
    def __init__(
        self,
        config: ProposerConfig,
        acceptors: list[AcceptorPeer],
        learners: list[Any],
        *,
        leader_config: LeaderConfig | None = None,
        rng: random.Random | None = None,
        clock: Callable[[], float] = clocks.now,
    ) -> None:
        if config.node_id >= len(config.proposers):
            raise ConfigError(
                f"--proposers lists {len(config.proposers)} proposers in id order, so proposer "
                f"ids are 0..{len(config.proposers) - 1}; this one is {config.node_id}"
            )
        self.config = config
        self.acceptors = acceptors
        self.learners = learners
        if config.heartbeat_interval >= config.election_timeout:
            raise ConfigError(
                f"--heartbeat-interval ({config.heartbeat_interval}s) must be shorter than "
                f"--election-timeout ({config.election_timeout}s)"
            )
        self.leader_config = leader_config or LeaderConfig(
            heartbeat_interval=config.heartbeat_interval,
            election_timeout=config.election_timeout,
            window=config.window,
            max_batch=config.max_batch,
            # Whole batches must fit the acceptors' value limit.
            max_batch_bytes=min(512 * 1024, log_entry.max_command_bytes(config.max_value_bytes)),
        )
        self._clock = clock
        options = channel_options(config.max_value_bytes)
        self.peers: dict[int, Any] = {
            i: pb_grpc.ProposerServiceStub(tls.aio_channel(address, config.tls, options))
            for i, address in enumerate(config.proposers)
            if i != config.node_id
        }
        self.leader = Leader(
            proposer_id=config.node_id,
            acceptor_ids=frozenset(p.acceptor_id for p in acceptors),
            peer_ids=frozenset(self.peers),
            rng=rng or runtime.rng(),
            config=self.leader_config,
            encode_batch=log_entry.encode_batch,
            noop_value=log_entry.NOOP,
        )
        self._tokens = itertools.count(1)
        self._waiting: dict[int, asyncio.Future[int]] = {}
        self._timer_at = float("inf")
        self._timer_changed = asyncio.Event()
        self._tasks: set[asyncio.Task[None]] = set()
        self._timer_task: asyncio.Task[None] | None = None
        # For metrics: when phase 1 (the campaign) and each instance's phase 2
        # began, the instance the last command batch went to, what was last seen.
        self._phase1_started = 0.0
        self._phase2_started: dict[int, float] = {}
        self._batch_instance = 0
        self._seen_leader_id: int | None = None
        self._last_leader_id: int | None = None
        self._seen_chosen_through = -1
        self._seen_compact_through = -1
        #: Each learner's snapshot index, by position in ``learners``, as its
        #: last Decide answer reported it.
        self._snapshot_indexes: dict[int, int] = {}
        self._logger = get_logger()

    # Lifecycle -----------------------------------------------------------

    def start(self) -> None:
        metrics.LEADER_CURRENT.set(-1)
        metrics.LEADER_IS_LEADER.set(0)
        self._handle(self.leader.start(self._clock()))
        self._observe_leader()
        self._timer_task = asyncio.create_task(self._timer_loop(), name="leader-timer")

    async def stop(self) -> None:
        if self._timer_task is not None:
            self._timer_task.cancel()
        for task in list(self._tasks):
            task.cancel()
        await asyncio.gather(*self._tasks, return_exceptions=True)

    def leader_address(self) -> str | None:
        leader_id = self.leader.leader_id
        if leader_id is None or leader_id >= len(self.config.proposers):
            return None
        return self.config.proposers[leader_id]

    # RPC entry points ----------------------------------------------------

    async def append(self, commands: list[bytes], deadline: float) -> int:
        """Append the commands; return the highest instance holding one."""
        if self.leader.role is not Role.LEADER:
            raise self._not_leader()
        futures = []
        batch: list[tuple[int, bytes]] = []
        for command in commands:
            token = next(self._tokens)
            future: asyncio.Future[int] = asyncio.get_running_loop().create_future()
            self._waiting[token] = future
            futures.append(future)
            batch.append((token, command))
        # One step for the whole Append, so that its commands share instances.
        self._step(functools.partial(self.leader.submit_many, batch))
        try:
            instances = await asyncio.wait_for(
                asyncio.gather(*futures), timeout=max(0.0, deadline - self._clock())
            )
        finally:
            for future in futures:
                future.cancel()
        return max(instances)

    def heartbeat(self, request: pb.HeartbeatRequest) -> pb.HeartbeatResponse:
        heartbeat = Heartbeat(
            wire.ballot_from_pb(request.ballot, required=True),
            request.proposer_id,
            request.chosen_through,
        )
        effects = self._step(lambda now: self.leader.on_heartbeat(heartbeat, now))
        answer = next((e for e in effects if isinstance(e, AnswerHeartbeat)), None)
        highest = answer.highest_ballot if answer else self.leader.highest_ballot_seen
        return pb.HeartbeatResponse(ballot=wire.ballot_to_pb(highest))

    def describe(self) -> pb.GetLeaderResponse:
        leader_id = self.leader.leader_id
        return pb.GetLeaderResponse(
            is_leader=self.leader.role is Role.LEADER,
            leader_id=leader_id or 0,
            leader_address=self.leader_address() or "",
            ballot=wire.ballot_to_pb(self.leader.ballot),
            chosen_through=self.leader.chosen_through,
            next_instance=self.leader.next_instance,
        )

    # Stepping the state machine -------------------------------------------

    def _step(
        self, step: Callable[[float], list[LeaderEffect]], *, timer: bool = False
    ) -> list[LeaderEffect]:
        try:
            effects = step(self._clock())
        except ProtocolError as exc:
            self._logger.warning("dropped a bad message", error=str(exc))
            return []
        self._handle(effects, timer=timer)
        self._observe_leader()
        return effects

    def _handle(self, effects: list[LeaderEffect], *, timer: bool = False) -> None:
        """Perform ``effects``, in order. ``timer``: they answer the timer, not a
        message (a step-down then means no majority answered in time, not preemption)."""
        for effect in effects:
            perform = _PERFORM.get(type(effect))
            if perform is not None:
                perform(self, effect, timer)

    # One method per kind of effect, all synchronous (I/O is spawned, never
    # awaited): _PERFORM, after the class, maps each effect type to its method.

    def _perform_send_to_acceptors(
        self, effect: SendToAcceptors[PrepareRange | Accept], timer: bool
    ) -> None:
        self._count_send(effect)
        targets = [p for p in self.acceptors if effect.to is None or p.acceptor_id in effect.to]
        for peer in targets:
            self._spawn(self._send_to_acceptor(peer, effect.message))

    def _perform_ask_leader_contact(self, effect: AskLeaderContact, timer: bool) -> None:
        for peer in self.acceptors:
            self._spawn(self._ask_leader_contact(peer, effect.seq))

    def _perform_send_heartbeat(self, effect: SendHeartbeat, timer: bool) -> None:
        for peer_id, stub in self.peers.items():
            self._spawn(self._send_heartbeat(peer_id, stub, effect.heartbeat))

    def _perform_set_timer(self, effect: SetTimer, timer: bool) -> None:
        self._timer_at = effect.at
        self._timer_changed.set()

    def _perform_chosen(self, effect: Chosen, timer: bool) -> None:
        metrics.MULTI_PAXOS.chosen.inc()
        started = self._phase2_started.pop(effect.instance, None)
        if started is not None:
            metrics.MULTI_PAXOS.phase2.observe(self._clock() - started)
        for token in effect.tokens:
            self._resolve(token, effect.instance)
        if self.learners:
            self._spawn(self._decide(effect))

    def _perform_rejected(self, effect: Rejected, timer: bool) -> None:
        error = NotLeaderError(effect.reason, self._address_of(effect.leader_hint))
        for token in effect.tokens:
            self._fail(token, error)

    def _perform_outcome_unknown(self, effect: OutcomeUnknown, timer: bool) -> None:
        unknown = OutcomeUnknownError(effect.reason)
        for token in effect.tokens:
            self._fail(token, unknown)

    def _perform_became_leader(self, effect: BecameLeader, timer: bool) -> None:
        metrics.MULTI_PAXOS.phase1.observe(self._clock() - self._phase1_started)
        self._logger.info(
            "became leader", ballot=str(effect.ballot), from_instance=effect.from_instance
        )

    def _perform_stepped_down(self, effect: SteppedDown, timer: bool) -> None:
        (metrics.LEADER_QUORUM_LOST if timer else metrics.MULTI_PAXOS.preemptions).inc()
        self._phase2_started.clear()
        self._logger.info("stepped down", reason=effect.reason, leader_hint=effect.leader_hint)

    def _perform_assigned(self, effect: Assigned, timer: bool) -> None:
        # Nothing to do until chosen; its Accept follows in these effects.
        metrics.LEADER_BATCH_COMMANDS.observe(len(effect.tokens))
        self._batch_instance = effect.instance

    def _count_send(self, effect: SendToAcceptors[PrepareRange | Accept]) -> None:
        message = effect.message
        if isinstance(message, PrepareRange):
            metrics.LEADER_CAMPAIGNS.inc()
            self._phase1_started = self._clock()
        elif effect.to is not None:  # only retransmissions go to some acceptors
            metrics.LEADER_RETRANSMITS.inc()
        else:
            metrics.MULTI_PAXOS.proposals.inc()
            self._phase2_started[message.instance] = self._clock()
            if message.instance == self._batch_instance:
                metrics.LEADER_BATCH_BYTES.observe(len(message.value))

    def _observe_leader(self) -> None:
        """Update the leader gauges when what this proposer knows changed
        (a comparison per step; the gauges' locks only on a change)."""
        leader_id = self.leader.leader_id
        if leader_id != self._seen_leader_id:
            self._seen_leader_id = leader_id
            metrics.LEADER_CURRENT.set(-1 if leader_id is None else leader_id)
            metrics.LEADER_IS_LEADER.set(1 if self.leader.role is Role.LEADER else 0)
            # Not counted: the gap of an election (None), or the same leader after it.
            if leader_id is not None and leader_id != self._last_leader_id:
                self._last_leader_id = leader_id
                metrics.LEADER_CHANGES.inc()
        chosen_through = self.leader.chosen_through
        if chosen_through != self._seen_chosen_through:
            self._seen_chosen_through = chosen_through
            metrics.LEADER_CHOSEN_THROUGH.set(chosen_through)

    def _resolve(self, token: int, instance: int) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_result(instance)

    def _fail(self, token: int, error: Exception) -> None:
        future = self._waiting.pop(token, None)
        if future is not None and not future.done():
            future.set_exception(error)

    def _not_leader(self) -> NotLeaderError:
        address = self.leader_address()
        if address is None:
            return NotLeaderError("no leader elected yet", None)
        return NotLeaderError(f"not the leader; proposer {self.leader.leader_id} leads", address)

    def _address_of(self, proposer_id: int | None) -> str | None:
        if proposer_id is None or proposer_id >= len(self.config.proposers):
            return None
        return self.config.proposers[proposer_id]

    # I/O ---------------------------------------------------------------------

    def _spawn(self, coro: Any) -> None:
        task = asyncio.create_task(coro)
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _timer_loop(self) -> None:
        while True:
            self._timer_changed.clear()
            delay = self._timer_at - self._clock()
            if delay > 0:
                try:
                    await asyncio.wait_for(self._timer_changed.wait(), timeout=min(delay, 3600))
                    continue  # re-armed: recompute
                except TimeoutError:
                    pass
            # The timer fired, so its time has come, even if the clock reads a
            # hair earlier (asyncio runs timers due within its resolution).
            due, self._timer_at = self._timer_at, float("inf")
            self._step(functools.partial(self._on_timer, due), timer=True)

    def _on_timer(self, due: float, now: float) -> list[LeaderEffect]:
        return self.leader.on_timer(max(now, due))

    async def _send_to_acceptor(self, peer: AcceptorPeer, message: PrepareRange | Accept) -> None:
        timeout = self.leader_config.phase_timeout
        try:
            if isinstance(message, PrepareRange):
                response = await peer.stub.PrepareRange(
                    pb.PrepareRangeRequest(prepare=wire.prepare_range_to_pb(message)),
                    timeout=timeout,
                )
                reply: Any = wire.prepare_range_response_from_pb(response)
            else:
                accept_response = await peer.stub.Accept(
                    pb.AcceptRequest(
                        accept=wire.accept_to_pb(message), space=pb.INSTANCE_SPACE_LOG
                    ),
                    timeout=timeout,
                )
                reply = wire.accept_response_from_pb(accept_response)
        except grpc.aio.AioRpcError as exc:
            compacted = trailing(exc, COMPACTED_THROUGH_METADATA)
            if exc.code() == grpc.StatusCode.OUT_OF_RANGE and compacted is not None:
                self._on_compacted(peer, compacted)
                return
            peer.last_error = describe_rpc_error(peer.address, exc)
            return
        except (wire.WireError, ValueError) as exc:
            self._logger.error(
                "malformed reply from acceptor", address=peer.address, error=str(exc)
            )
            return
        if reply.acceptor_id != peer.acceptor_id:
            self._logger.error(
                "acceptor id mismatch: list acceptors in id order",
                address=peer.address,
                expected=peer.acceptor_id,
                got=reply.acceptor_id,
            )
            return
        if isinstance(reply, PromiseRange):
            self._step(lambda now: self.leader.on_promise_range(reply, now))
        elif isinstance(reply, Reject):
            metrics.MULTI_PAXOS.rejections.inc()
            self._step(lambda now: self.leader.on_reject(reply, now))
        else:
            self._step(lambda now: self.leader.on_accepted(reply, now))

    def _on_compacted(self, peer: AcceptorPeer, text: str) -> None:
        """An acceptor refused an Accept below its compaction point."""
        try:
            through = int(text)
        except ValueError:
            self._logger.error("malformed compaction point", address=peer.address, value=text)
            return
        self._step(lambda now: self.leader.on_compacted(peer.acceptor_id, through, now))
        self._observe_compaction()

    def _observe_compaction(self) -> None:
        if self.leader.compact_through != self._seen_compact_through:
            self._seen_compact_through = self.leader.compact_through
            metrics.LEADER_COMPACT_THROUGH.set(self._seen_compact_through)

    async def _ask_leader_contact(self, peer: AcceptorPeer, seq: int) -> None:
        request = pb.GetLeaderContactRequest(proposer_id=self.config.node_id)
        try:
            reply = await peer.stub.GetLeaderContact(
                request, timeout=self.leader_config.phase_timeout
            )
        except grpc.aio.AioRpcError as exc:
            peer.last_error = describe_rpc_error(peer.address, exc)
            return
        if reply.acceptor_id != peer.acceptor_id:
            return  # misconfigured list; _send_to_acceptor logs it
        leader_id = reply.proposer_id if reply.has_contact else None
        since = reply.seconds_since
        self._step(
            lambda now: self.leader.on_leader_contact(peer.acceptor_id, seq, leader_id, since, now)
        )

    async def _send_heartbeat(self, peer_id: int, stub: Any, heartbeat: Heartbeat) -> None:
        request = pb.HeartbeatRequest(
            ballot=wire.ballot_to_pb(heartbeat.ballot),
            proposer_id=heartbeat.proposer_id,
            address=self.config.proposers[self.config.node_id],
            chosen_through=heartbeat.chosen_through,
        )
        try:
            response = await stub.Heartbeat(request, timeout=self.leader_config.election_timeout)
            highest = wire.ballot_from_pb(response.ballot, required=False)
        except (grpc.aio.AioRpcError, wire.WireError):
            return
        self._step(lambda now: self.leader.on_heartbeat_reply(peer_id, highest, now))

    async def _decide(self, chosen: Chosen) -> None:
        """Tell every learner; their answers carry their snapshot indexes,
        which make the compaction point (roles/compaction.py)."""
        request = pb.DecideRequest(
            decide=wire.decide_to_pb(chosen.decide), space=pb.INSTANCE_SPACE_LOG
        )
        answers = await asyncio.gather(
            *(stub.Decide(request, timeout=2.0) for stub in self.learners),
            return_exceptions=True,
        )
        changed = False
        for i, answer in enumerate(answers):
            if isinstance(answer, pb.DecideResponse):
                # The latest, not the highest: a wiped learner's old
                # snapshot is gone (T itself never moves back).
                index = answer.snapshot_index
                if index != self._snapshot_indexes.get(i):
                    self._snapshot_indexes[i] = index
                    changed = True
        if changed:
            self.leader.on_snapshot_indexes(
                list(self._snapshot_indexes.values()), len(self.learners)
            )
            self._observe_compaction()


#: How :meth:`LogDriver._handle` performs each kind of effect. AnswerHeartbeat
#: has no entry: the answer goes back in the Heartbeat RPC that asked for it.
_PERFORM: dict[type[Any], Callable[[LogDriver, Any, bool], None]] = {
    SendToAcceptors: LogDriver._perform_send_to_acceptors,
    AskLeaderContact: LogDriver._perform_ask_leader_contact,
    SendHeartbeat: LogDriver._perform_send_heartbeat,
    SetTimer: LogDriver._perform_set_timer,
    Chosen: LogDriver._perform_chosen,
    Rejected: LogDriver._perform_rejected,
    OutcomeUnknown: LogDriver._perform_outcome_unknown,
    BecameLeader: LogDriver._perform_became_leader,
    SteppedDown: LogDriver._perform_stepped_down,
    Assigned: LogDriver._perform_assigned,
}
