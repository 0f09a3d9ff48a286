"""Classic Paxos ("Paxos Made Simple") as pure, deterministic state machines.

This package is the protocol and nothing else. It does no I/O, reads no clock
and draws no randomness of its own: the caller feeds messages (and the current
time, and a random source) in, and gets replies and effects out. Storage and
transport live in :mod:`paxos_service`. The model is etcd-io/raft and h11.

Roles (each module's docstring has its state table):
    :class:`Acceptor`  phase 1b/2b; its state must be persisted before replying.
    :class:`Proposer`  phase 1a/2a for one instance, with backoff and a deadline.
    :class:`Learner`   finds out which value is chosen.
    :class:`Leader`    Multi-Paxos: one phase 1 for all instances, pipelined phase 2.

The proposer and the leader share their effects (:mod:`roles.effects`):
:class:`SendToAcceptors`, :class:`SetTimer` and :class:`Chosen`.

:mod:`roles.recovery` decides when a new acceptor file may vote and how an
acceptor that lost its storage is rebuilt from its peers.
"""

from roles.acceptor import Acceptor, AcceptorState, AcceptorStep, RangePromise, RangeStep
from roles.ballot import ZERO_BALLOT, Ballot
from roles.effects import Chosen, SendToAcceptors, SetTimer
from roles.errors import Compacted, NotVoting, ProtocolError, SafetyViolation
from roles.heartbeat import Heartbeat
from roles.leader import Leader, Role
from roles.leader_config import LeaderConfig
from roles.leader_effects import (
    AnswerHeartbeat,
    AskLeaderContact,
    Assigned,
    BecameLeader,
    LeaderEffect,
    OutcomeUnknown,
    Rejected,
    SendHeartbeat,
    SteppedDown,
)
from roles.learner import Conflict, Learned, Learner
from roles.messages import (
    Accept,
    Accepted,
    Decide,
    Prepare,
    PrepareRange,
    Promise,
    PromiseRange,
    Reject,
)
from roles.proposer import Effect, GaveUp, Phase, Proposer, ProposerConfig
from roles.quorum import majority
from roles.rng import RandomSource

__all__ = [
    "ZERO_BALLOT",
    "Accept",
    "Accepted",
    "Acceptor",
    "AcceptorState",
    "AcceptorStep",
    "AnswerHeartbeat",
    "AskLeaderContact",
    "Assigned",
    "Ballot",
    "BecameLeader",
    "Chosen",
    "Compacted",
    "Conflict",
    "Decide",
    "Effect",
    "GaveUp",
    "Heartbeat",
    "Leader",
    "LeaderConfig",
    "LeaderEffect",
    "Learned",
    "Learner",
    "NotVoting",
    "OutcomeUnknown",
    "Phase",
    "Prepare",
    "PrepareRange",
    "Promise",
    "PromiseRange",
    "Proposer",
    "ProposerConfig",
    "ProtocolError",
    "RandomSource",
    "RangePromise",
    "RangeStep",
    "Reject",
    "Rejected",
    "Role",
    "SafetyViolation",
    "SendHeartbeat",
    "SendToAcceptors",
    "SetTimer",
    "SteppedDown",
    "majority",
]
