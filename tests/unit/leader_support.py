"""Shared setup for the Multi-Paxos leader tests.

A leader with three acceptors and predictable randomness, plus the helpers
that drive it through an election, choose instances and snapshot every
attribute, so that "stale or illegal input changes nothing" can be checked
by comparing snapshots before and after the input.
"""

from __future__ import annotations

import copy
from collections.abc import Sequence
from typing import Any

from roles import (
    Accept,
    Accepted,
    Ballot,
    Heartbeat,
    Leader,
    LeaderConfig,
    LeaderEffect,
    PromiseRange,
    Role,
    SendToAcceptors,
)

PID = 1
ACCEPTORS = frozenset({1, 2, 3})
FIVE = frozenset({1, 2, 3, 4, 5})
PEERS = frozenset({2, 3})
NOOP = b"noop"
T = 1.0  # election timeout
CONFIG = LeaderConfig(
    heartbeat_interval=0.1,
    election_timeout=T,
    phase_timeout=0.5,
    window=4,
    max_batch=3,
    max_retransmits=2,
    max_queued=10,
    pre_vote=False,
)


class RecordingRandom:
    """Records every draw and returns a fixed fraction of the range, so that
    timeouts are predictable: with 0.5, an election timeout is 1.5 T."""

    def __init__(self, fraction: float = 0.5) -> None:
        self.fraction = fraction
        self.calls: list[tuple[float, float]] = []

    def uniform(self, a: float, b: float) -> float:
        self.calls.append((a, b))
        return a + (b - a) * self.fraction


class Encoder:
    """``encode_batch`` that records what it was asked to pack."""

    def __init__(self) -> None:
        self.calls: list[list[bytes]] = []

    def __call__(self, commands: Sequence[bytes]) -> bytes:
        self.calls.append(list(commands))
        return b"|".join(commands)


def make(
    *,
    acceptors: frozenset[int] = ACCEPTORS,
    config: LeaderConfig = CONFIG,
    chosen_through: int = 0,
    rng: RecordingRandom | None = None,
    encoder: Encoder | None = None,
) -> Leader:
    return Leader(
        proposer_id=PID,
        acceptor_ids=acceptors,
        peer_ids=PEERS,
        rng=rng or RecordingRandom(),
        config=config,
        encode_batch=encoder or Encoder(),
        noop_value=NOOP,
        chosen_through=chosen_through,
    )


def snapshot(leader: Leader) -> dict[str, Any]:
    """Every attribute of the leader except its injected callables."""
    return {
        k: copy.deepcopy(v) for k, v in vars(leader).items() if k not in ("_rng", "_encode_batch")
    }


def b(round_: int, proposer_id: int = PID) -> Ballot:
    return Ballot(round_, proposer_id)


SEEN = Ballot(3, 2)


def promise(
    acceptor_id: int, ballot: Ballot, *reports: tuple[int, Ballot, bytes], start: int = 1
) -> PromiseRange:
    accepted = tuple(Accepted(i, rb, acceptor_id, v) for i, rb, v in reports)
    return PromiseRange(start, ballot, acceptor_id, accepted)


def of(kind: type, effects: list[LeaderEffect]) -> list[Any]:
    return [e for e in effects if isinstance(e, kind)]


def accepts(effects: list[LeaderEffect]) -> list[tuple[int, bytes]]:
    """(instance, value) of every Accept sent, in order."""
    sent = [e.message for e in of(SendToAcceptors, effects)]
    return [(m.instance, m.value) for m in sent if isinstance(m, Accept)]


def campaign_above(leader: Leader, seen: Ballot = SEEN) -> Ballot:
    """Let the leader see ``seen`` (from its peer) and campaign above it."""
    leader.on_heartbeat(Heartbeat(seen, seen.proposer_id, 0), 0.0)
    leader.campaign(0.0)
    assert leader.ballot == Ballot(seen.round + 1, PID)
    return leader.ballot


def elect(leader: Leader, now: float = 0.0) -> list[LeaderEffect]:
    """Campaign and collect empty promises from acceptors 1 and 2."""
    leader.campaign(now)
    leader.on_promise_range(promise(1, leader.ballot, start=leader.next_instance), now)
    effects = leader.on_promise_range(promise(2, leader.ballot, start=leader.next_instance), now)
    assert leader.role is Role.LEADER
    return effects


def choose(leader: Leader, instance: int, now: float = 0.0) -> list[LeaderEffect]:
    """Accepted from acceptors 1 and 2 for the in-flight ``instance``."""
    value = leader._pipeline.in_flight[instance].value
    effects = leader.on_accepted(Accepted(instance, leader.ballot, 1, value), now)
    return effects + leader.on_accepted(Accepted(instance, leader.ballot, 2, value), now)


def submit_many(leader: Leader, tokens: range, now: float = 0.0) -> list[LeaderEffect]:
    effects: list[LeaderEffect] = []
    for token in tokens:
        effects += leader.submit(token, f"cmd{token}".encode(), now)
    return effects


def leader_with_work() -> Leader:
    """A leader with instances 1-4 in flight (tokens 1-4) and tokens 5, 6 queued."""
    leader = make()
    elect(leader)
    submit_many(leader, range(1, 7))
    return leader
