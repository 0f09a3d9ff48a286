"""The network: addresses and the nodes behind them, partitions, and the
path of every message (delays, losses, duplicates, refusals, deadlines,
cancellations and response streams), drawn from one ``random.Random``.
The fault model is in :mod:`.faults`.

Partitions (between node names, as given to :meth:`SimNetwork.attach` and
:meth:`SimNetwork.channel`): a node always reaches itself. With
:meth:`SimNetwork.partition` nodes in different groups cannot talk; a node
listed in no group is not affected by the partition (it reaches every
node). :meth:`SimNetwork.isolate` cuts a node from every other node,
:meth:`SimNetwork.block` cuts one direction. All three add up;
:meth:`SimNetwork.heal` removes them all.
"""

from __future__ import annotations

import asyncio
import contextvars
import itertools
import random
import traceback
from collections.abc import Callable, Iterable, Sequence
from typing import Any

import grpc

from tests.simulation.realsim.net.calls import Rpc, SimUnaryStreamCall, SimUnaryUnaryCall
from tests.simulation.realsim.net.channel import SimChannel
from tests.simulation.realsim.net.faults import (
    TRANSPORT_PREFIX,
    NetFaults,
    TraceEvent,
    UnexpectedError,
)
from tests.simulation.realsim.net.server import Endpoint, SimServer
from tests.simulation.realsim.net.server_call import ServerCall
from tests.simulation.realsim.net.wire import OK, Status, too_big


class SimNetwork:
    """Addresses, nodes, partitions and faults; see the module documentation.

    ``rng``: every fault and delay is drawn from it, in event order.
    ``trace``: keep :attr:`trace`, a list of :class:`TraceEvent`.

    Assert after a run that :attr:`unexpected_errors` (handlers that raised
    something other than an abort; messages that did not parse) and
    :attr:`suppressed_aborts` (handlers that swallowed their own abort) are
    empty.
    """

    def __init__(
        self, rng: random.Random, faults: NetFaults | None = None, *, trace: bool = False
    ) -> None:
        self.rng = rng
        self.faults = faults if faults is not None else NetFaults()
        self.trace: list[TraceEvent] | None = [] if trace else None
        self.unexpected_errors: list[UnexpectedError] = []
        self.suppressed_aborts: list[str] = []
        self._endpoints: dict[str, Endpoint] = {}
        self._owners: dict[str, str] = {}
        self._groups: dict[str, int] = {}
        self._isolated: dict[str, None] = {}
        self._blocked: dict[tuple[str, str], None] = {}
        self._ids = itertools.count(1)
        self._context = contextvars.Context()  # network events belong to no node

    # -- addresses ------------------------------------------------------------------

    def attach(
        self, address: str, node: str, server: SimServer, context: contextvars.Context
    ) -> None:
        """Make ``address`` reachable: calls to it run ``server``'s handlers as
        tasks in copies of ``context``, on behalf of ``node``."""
        if address in self._endpoints:
            raise ValueError(f"{address} is already attached to {self._endpoints[address].node}")
        self._endpoints[address] = Endpoint(address, node, server, context)
        self._owners[address] = node
        self._trace(node, node, "", f"attach:{address}")

    def detach(self, address: str) -> None:
        """The server at ``address`` is gone (crash or stop): new calls are
        refused, calls in flight fail UNAVAILABLE and their handlers are
        cancelled."""
        endpoint = self._endpoints.pop(address, None)
        if endpoint is None:
            return
        self._trace(endpoint.node, endpoint.node, "", f"detach:{address}")
        for server_call in list(endpoint.calls.values()):
            rpc = server_call.rpc
            server_call.status_sent = True
            server_call.close(cancelled=True)
            if server_call.task is not None and not server_call.task.done():
                server_call.task.cancel()
            status = Status(grpc.StatusCode.UNAVAILABLE, f"{TRANSPORT_PREFIX}Socket closed", (), ())
            if rpc.streaming:
                self._stream_out(server_call, "status", status)
            else:
                self._reply(server_call, status)

    def drain(self, address: str) -> None:
        """The server at ``address`` is stopping: new calls get UNAVAILABLE,
        calls in flight go on."""
        endpoint = self._endpoints.get(address)
        if endpoint is not None:
            endpoint.draining = True

    def node_at(self, address: str) -> str | None:
        """The node attached at ``address``, or None."""
        endpoint = self._endpoints.get(address)
        return None if endpoint is None else endpoint.node

    def calls_in_flight(self, address: str) -> int:
        """Handlers at ``address`` that have not sent their status."""
        endpoint = self._endpoints.get(address)
        return 0 if endpoint is None else len(endpoint.calls)

    def channel(
        self, source_node: str, address: str, options: Sequence[tuple[str, Any]] | None = None
    ) -> SimChannel:
        """A channel that ``source_node`` uses to call ``address``."""
        return SimChannel(self, source_node, address, options)

    # -- partitions -----------------------------------------------------------------

    def partition(self, *groups: Iterable[str]) -> None:
        """Nodes in different groups cannot talk (replaces the previous
        partition; nodes in no group are unaffected)."""
        self._groups = {}
        for index, group in enumerate(groups):
            for node in sorted(group):
                if node in self._groups:
                    raise ValueError(f"{node} is in two groups")
                self._groups[node] = index
        self._trace("", "", "", f"partition:{[sorted(g) for g in groups]}")

    def isolate(self, node: str) -> None:
        """``node`` can reach no other node and no other node can reach it."""
        self._isolated[node] = None
        self._trace(node, "", "", "isolate")

    def block(self, src: str, dst: str) -> None:
        """Messages from ``src`` to ``dst`` are lost (one way)."""
        self._blocked[(src, dst)] = None
        self._trace(src, dst, "", "block")

    def unblock(self, src: str, dst: str) -> None:
        self._blocked.pop((src, dst), None)

    def heal(self) -> None:
        """Remove every partition, isolation and block."""
        self._groups = {}
        self._isolated = {}
        self._blocked = {}
        self._trace("", "", "", "heal")

    def can_send(self, src: str, dst: str) -> bool:
        """A message from node ``src`` to node ``dst`` is not cut by a partition."""
        if src == dst:
            return True
        if src in self._isolated or dst in self._isolated:
            return False
        if (src, dst) in self._blocked:
            return False
        group_src = self._groups.get(src)
        group_dst = self._groups.get(dst)
        return group_src is None or group_dst is None or group_src == group_dst

    def reachable(self, a: str, b: str) -> bool:
        """``a`` and ``b`` can talk both ways."""
        return self.can_send(a, b) and self.can_send(b, a)

    # -- internals: faults ----------------------------------------------------------

    def _delay(self) -> float:
        faults = self.faults
        if faults.long_delay_probability > 0 and self.rng.random() < faults.long_delay_probability:
            return self.rng.uniform(*faults.long_delay)
        return self.rng.uniform(faults.min_delay, faults.max_delay)

    def _dropped(self) -> bool:
        probability = self.faults.drop_probability
        return probability > 0 and self.rng.random() < probability

    def _trace(self, src: str, dst: str, method: str, outcome: str) -> None:
        if self.trace is not None:
            try:
                now = asyncio.get_running_loop().time()
            except RuntimeError:
                now = -1.0  # outside the loop (set-up)
            self.trace.append(TraceEvent(now, src, dst, method, outcome))

    def _unexpected(self, node: str, method: str, error: BaseException) -> None:
        now = asyncio.get_running_loop().time()
        text = "".join(traceback.format_exception(error))
        self.unexpected_errors.append(UnexpectedError(now, node, method, error, text))
        self._trace("", node, method, f"unexpected:{type(error).__name__}")

    def _call_later(self, delay: float, callback: Callable[..., None], *args: Any) -> Any:
        loop = asyncio.get_running_loop()
        return loop.call_later(delay, callback, *args, context=self._context)

    # -- internals: requests --------------------------------------------------------

    def _start(self, rpc: Rpc) -> None:
        loop = asyncio.get_running_loop()
        channel = rpc.channel
        call = rpc.call
        if too_big(len(rpc.request), channel.max_send):
            call._set_status(
                grpc.StatusCode.RESOURCE_EXHAUSTED,
                f"Sent message larger than max ({len(rpc.request)} vs. {channel.max_send})",
            )
            return
        if rpc.deadline is not None:
            rpc.deadline_timer = loop.call_at(
                rpc.deadline, self._client_deadline, rpc, context=self._context
            )
        self._send_request(rpc)

    def _send_request(self, rpc: Rpc) -> None:
        if rpc.call.done():
            return
        dst = self._owners.get(rpc.address, rpc.address)
        copies = 1
        duplicable = not any(rpc.method.startswith(p) for p in self.faults.never_duplicate)
        if (
            duplicable
            and self.faults.duplicate_probability > 0
            and self.rng.random() < self.faults.duplicate_probability
        ):
            copies = 2
            self._trace(rpc.src, dst, rpc.method, "request-duplicated")
        sent_at = asyncio.get_running_loop().time()
        for _ in range(copies):
            if not self.can_send(rpc.src, dst) or self._dropped():
                self._trace(rpc.src, dst, rpc.method, "request-lost")
                self._lost(rpc)
                continue
            self._call_later(self._delay(), self._arrive, rpc, sent_at)

    def _arrive(self, rpc: Rpc, sent_at: float) -> None:
        now = asyncio.get_running_loop().time()
        endpoint = self._endpoints.get(rpc.address)
        dst = endpoint.node if endpoint is not None else self._owners.get(rpc.address, rpc.address)
        if not self.can_send(rpc.src, dst):
            self._trace(rpc.src, dst, rpc.method, "request-lost")
            self._lost(rpc)
            return
        if rpc.gave_up:
            self._trace(rpc.src, dst, rpc.method, "request-late")
            return
        if endpoint is None:
            self._refuse(rpc, dst, "Connection refused")
            return
        if endpoint.draining:
            self._refuse(rpc, dst, "Connection refused (server shutting down)")
            return
        deadline = None if rpc.deadline is None else rpc.deadline + (now - sent_at)
        if deadline is not None and deadline <= now:
            self._trace(rpc.src, dst, rpc.method, "request-expired")
            return
        rpc.call._set_connected()
        server_call = ServerCall(self, rpc, endpoint, deadline)
        rpc.servers.append(server_call)
        self._trace(rpc.src, dst, rpc.method, "delivered")
        server_call.start()

    def _refuse(self, rpc: Rpc, dst: str, why: str) -> None:
        self._trace(rpc.src, dst, rpc.method, f"refused:{why}")
        if rpc.wait_for_ready:
            self._call_later(self.faults.reconnect_backoff, self._send_request, rpc)
            return
        if not self.can_send(dst, rpc.src):
            self._lost(rpc)
            return
        self._call_later(self._delay(), self._fail_transport, rpc, why)

    def _fail(self, rpc: Rpc, code: grpc.StatusCode, details: str) -> None:
        if rpc.call._set_status(code, details):
            self._trace(rpc.address, rpc.src, rpc.method, f"status:{code.name}")

    def _fail_transport(self, rpc: Rpc, why: str) -> None:
        """UNAVAILABLE from the transport. "failed to connect" (which the
        service reads as "the request was never acted on") only if no copy
        of the request reached a handler; no copy will from now on."""
        if rpc.call.done():
            return
        if rpc.servers:
            details = f"{TRANSPORT_PREFIX}{why}"
        else:
            rpc.gave_up = True
            details = (
                f"{TRANSPORT_PREFIX}failed to connect to all addresses; "
                f"last error: UNAVAILABLE: {rpc.address}: {why}"
            )
        self._fail(rpc, grpc.StatusCode.UNAVAILABLE, details)

    def _lost(self, rpc: Rpc) -> None:
        """A message of ``rpc`` was lost: without a deadline, the connection
        times out after connect_timeout."""
        if rpc.deadline is not None or rpc.timeout_armed:
            return
        rpc.timeout_armed = True
        self._call_later(self.faults.connect_timeout, self._connection_timed_out, rpc)

    def _connection_timed_out(self, rpc: Rpc) -> None:
        if rpc.call.done():
            return
        self._fail_transport(rpc, "Connection timed out")
        rpc.gave_up = True
        for server_call in rpc.servers:
            server_call.cancel("connection timed out")

    def _client_deadline(self, rpc: Rpc) -> None:
        if rpc.call.done():
            return
        if rpc.call._set_status(grpc.StatusCode.DEADLINE_EXCEEDED, "Deadline Exceeded"):
            self._trace(rpc.address, rpc.src, rpc.method, "status:DEADLINE_EXCEEDED")
        self._client_gave_up(rpc, "deadline")

    def _client_gave_up(self, rpc: Rpc, why: str) -> None:
        """The client cancelled or passed its deadline: tell the servers (if the
        cancellation can reach them)."""
        rpc.gave_up = True
        for server_call in rpc.servers:
            if server_call.closed:
                continue
            if self.can_send(rpc.src, server_call.node):
                self._call_later(self._delay(), server_call.cancel, f"client-{why}")

    # -- internals: replies ---------------------------------------------------------

    def _reply(self, server_call: ServerCall, status: Status) -> None:
        rpc = server_call.rpc
        if not self.can_send(server_call.node, rpc.src) or self._dropped():
            self._trace(server_call.node, rpc.src, rpc.method, "reply-lost")
            self._lost(rpc)
            return
        self._call_later(self._delay(), self._deliver_reply, server_call, status)

    def _deliver_reply(self, server_call: ServerCall, status: Status) -> None:
        rpc = server_call.rpc
        src = server_call.node
        if not self.can_send(src, rpc.src):
            self._trace(src, rpc.src, rpc.method, "reply-lost")
            self._lost(rpc)
            return
        call = rpc.call
        if call.done():
            self._trace(src, rpc.src, rpc.method, f"reply-ignored:{status.code.name}")
            return
        assert isinstance(call, SimUnaryUnaryCall)
        code, details = status.code, status.details
        if code is OK:
            data = status.response if status.response is not None else b""
            if too_big(len(data), rpc.channel.max_receive):
                code = grpc.StatusCode.RESOURCE_EXHAUSTED
                details = (
                    f"Received message larger than max ({len(data)} vs. {rpc.channel.max_receive})"
                )
            else:
                deserializer = rpc.deserializer
                try:
                    call._response = deserializer(data) if deserializer is not None else data
                except Exception as exc:
                    self._unexpected(rpc.src, rpc.method, exc)
                    code, details = grpc.StatusCode.INTERNAL, "Failed to deserialize response"
        call._set_status(code, details, status.trailing, status.initial)
        self._trace(src, rpc.src, rpc.method, f"status:{code.name}")

    # -- internals: response streams ------------------------------------------------

    def _stream_out(self, server_call: ServerCall, kind: str, payload: Any) -> None:
        rpc = server_call.rpc
        if rpc.stream_owner is None:
            rpc.stream_owner = server_call
        elif rpc.stream_owner is not server_call:
            return  # a duplicated request's stream: the first one owns the call
        if rpc.broken or rpc.call.done():
            return
        if not self.can_send(server_call.node, rpc.src) or self._dropped():
            self._trace(server_call.node, rpc.src, rpc.method, f"stream-{kind}-lost")
            self._break(rpc)
            return
        now = asyncio.get_running_loop().time()
        arrival = max(now + self._delay(), rpc.last_arrival)
        rpc.last_arrival = arrival
        rpc.inbox.append((arrival, kind, payload))
        if rpc.pump is None:
            rpc.pump = self._call_later(arrival - now, self._pump, rpc)

    def _pump(self, rpc: Rpc) -> None:
        loop = asyncio.get_running_loop()
        rpc.pump = None
        while rpc.inbox and rpc.inbox[0][0] <= loop.time():
            _, kind, payload = rpc.inbox.popleft()
            self._deliver_stream(rpc, kind, payload)
        if rpc.inbox:
            rpc.pump = self._call_later(rpc.inbox[0][0] - loop.time(), self._pump, rpc)

    def _deliver_stream(self, rpc: Rpc, kind: str, payload: Any) -> None:
        call = rpc.call
        assert isinstance(call, SimUnaryStreamCall)
        owner = rpc.stream_owner
        assert owner is not None
        if rpc.broken or call.done():
            return
        if not self.can_send(owner.node, rpc.src):
            self._trace(owner.node, rpc.src, rpc.method, f"stream-{kind}-lost")
            self._break(rpc)
            return
        if kind == "status":
            status: Status = payload
            call._set_status(status.code, status.details, status.trailing, status.initial)
            self._trace(owner.node, rpc.src, rpc.method, f"status:{status.code.name}")
            return
        data: bytes = payload
        call._set_initial(owner.context._initial or ())
        if too_big(len(data), rpc.channel.max_receive):
            details = (
                f"Received message larger than max ({len(data)} vs. {rpc.channel.max_receive})"
            )
            call._set_status(grpc.StatusCode.RESOURCE_EXHAUSTED, details)
            owner.cancel("client-rejected-message")
            return
        deserializer = rpc.deserializer
        try:
            message = deserializer(data) if deserializer is not None else data
        except Exception as exc:
            self._unexpected(rpc.src, rpc.method, exc)
            call._set_status(grpc.StatusCode.INTERNAL, "Failed to deserialize response")
            owner.cancel("client-rejected-message")
            return
        call._push(message)

    def _break(self, rpc: Rpc) -> None:
        """A stream's connection is dead: the client notices at its deadline,
        or connect_timeout later; the server then too."""
        if rpc.broken:
            return
        rpc.broken = True
        rpc.inbox.clear()
        if rpc.pump is not None:
            rpc.pump.cancel()
            rpc.pump = None
        self._call_later(self.faults.connect_timeout, self._stream_broken, rpc)

    def _stream_broken(self, rpc: Rpc) -> None:
        if not rpc.call.done():
            self._fail_transport(rpc, "Connection timed out")
        rpc.gave_up = True
        for server_call in rpc.servers:
            server_call.cancel("connection timed out")
