"""The fault model of the in-memory network, and what a run leaves behind.

What can happen to a message (every draw from the network's rng, in event
order):

* Each request copy and each reply is *lost* with ``drop_probability``, or
  when the sending node cannot reach the receiving one, checked when it is
  sent and again when it arrives (a partition that starts while a message is
  in flight eats it). A lost message is never retransmitted: the caller sees
  DEADLINE_EXCEEDED at its deadline, or, for a call without a deadline,
  UNAVAILABLE ("connection timed out") ``connect_timeout`` seconds after the
  loss (and then the server side of the call is cancelled too).
* A request is *duplicated* with ``duplicate_probability``: the handler runs
  twice (independent delays); the first reply to arrive wins, the other is
  ignored.
* Every message takes a uniform delay in [``min_delay``, ``max_delay``], or
  with ``long_delay_probability`` a uniform delay in ``long_delay``, so
  messages of different calls reorder. Messages of one response stream keep
  their order; a lost stream message breaks the stream (UNAVAILABLE after
  ``connect_timeout``, or DEADLINE_EXCEEDED at the deadline).
* A call to an address nobody is attached to gets UNAVAILABLE ("Connection
  refused") after one network delay (if the refusal can travel back), or,
  with ``wait_for_ready=True``, keeps trying every ``reconnect_backoff``
  seconds until its deadline. Calls in flight to an address that is
  detached (crash) fail UNAVAILABLE ("Socket closed") and their handlers are
  cancelled.
* Cancelling a call (``call.cancel()``, cancelling the task awaiting it,
  ``asyncio.wait_for`` timing out) or its deadline passing on the client
  cancels the server handler one network delay later, if the client can
  still reach the server; in any case the server cancels the handler at its
  own deadline (client deadline + the request's delay), as grpc does.

Kept apart from the router, which applies it, so the model reads (and a run
tunes it) on its own.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import NamedTuple

#: Every UNAVAILABLE the simulated transport itself produces (refused, timed
#: out, socket closed) has details starting with this; the rest of the text
#: is what grpc says ("failed to connect to all addresses; ..." only when no
#: copy of the request reached a handler, as the service relies on).
TRANSPORT_PREFIX = "sim transport: "


@dataclass
class NetFaults:
    """Per-message faults; see the module documentation. Mutable: change the
    fields (or assign a new NetFaults to ``network.faults``) while running."""

    drop_probability: float = 0.0
    duplicate_probability: float = 0.0
    min_delay: float = 0.0002
    max_delay: float = 0.002
    long_delay_probability: float = 0.0
    long_delay: tuple[float, float] = (0.05, 1.0)
    #: A call without a deadline whose message was lost fails UNAVAILABLE after this.
    connect_timeout: float = 20.0
    #: With wait_for_ready=True, how often a refused call tries again.
    reconnect_backoff: float = 1.0
    #: Method path prefixes never duplicated. gRPC itself never delivers a
    #: call twice; duplicates model a peer's own retries, which a client of
    #: the KV service makes knowingly (it combines its attempts' answers).
    never_duplicate: tuple[str, ...] = ()


class TraceEvent(NamedTuple):
    """One entry of :attr:`SimNetwork.trace`."""

    time: float
    src: str
    dst: str
    method: str
    outcome: str


@dataclass
class UnexpectedError:
    """A servicer (or the wire) failed the way a real server would log with a
    traceback: an exception that is not an abort, or a message that does not
    parse."""

    time: float
    node: str
    method: str
    error: BaseException
    traceback: str = field(repr=False)
