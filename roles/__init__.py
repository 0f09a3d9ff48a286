"""Classic Paxos ("Paxos Made Simple") as pure, deterministic state machines.

This package is the protocol and nothing else. It does no I/O, reads no clock
and draws no randomness of its own: the caller feeds messages (and the current
time, and a random source) in, and gets replies and effects out. Storage and
transport live in :mod:`paxos_service`. The model is etcd-io/raft and h11.

Roles:
    :class:`Acceptor`  phase 1b/2b; its state must be persisted before replying.
    :class:`Proposer`  phase 1a/2a for one instance, with backoff and a deadline.
    :class:`Learner`   finds out which value is chosen.
    :class:`Leader`    Multi-Paxos: one phase 1 for all instances, pipelined phase 2.

:mod:`roles.recovery` decides when a new acceptor file may vote and how an
acceptor that lost its storage is rebuilt from its peers.
"""

from roles.acceptor import Acceptor, AcceptorState, AcceptorStep, RangePromise, RangeStep
from roles.ballot import ZERO_BALLOT, Ballot
from roles.errors import NotVoting, ProtocolError, SafetyViolation
from roles.leader import (
    AnswerHeartbeat,
    AskLeaderContact,
    Assigned,
    BecameLeader,
    Heartbeat,
    InstanceChosen,
    Leader,
    LeaderConfig,
    LeaderEffect,
    OutcomeUnknown,
    Rejected,
    Role,
    SendHeartbeat,
    SendToAcceptors,
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
from roles.proposer import (
    Broadcast,
    Chosen,
    Effect,
    GaveUp,
    Phase,
    Proposer,
    ProposerConfig,
    RandomSource,
    SetTimer,
)
from roles.quorum import majority

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
    "Broadcast",
    "Chosen",
    "Conflict",
    "Decide",
    "Effect",
    "GaveUp",
    "Heartbeat",
    "InstanceChosen",
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
