"""Phase 2 under a leader: the window of instances in flight, and batching.

The leader batches queued commands (up to ``max_batch``) into one instance
value with ``encode_batch``. It keeps at most ``window`` instances between
``chosen_through`` and the next free instance, so at most ``window`` are in
phase 2 and a stuck instance at the head stalls the pipeline instead of
growing memory. Batching is natural: a command goes out at once while the
window has room, and commands that arrive while it is full share the next
instance. Each instance counts Accepted for the leader's own ballot; a majority
makes it chosen. An instance without a quorum after ``phase_timeout`` is sent
again to the acceptors that have not answered; after ``max_retransmits`` such
resends the leader assumes it cannot reach a majority and steps down, so that
a proposer that can takes over.

Before any new command, the instances phase 1 reported are proposed again
(:mod:`roles.campaign`): each with its adopted value, or a no-op in a hole.
"""

from __future__ import annotations

from collections import deque
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

from roles.ballot import Ballot
from roles.effects import NEVER, SendToAcceptors
from roles.errors import ProtocolError
from roles.leader_config import LeaderConfig
from roles.leader_effects import Assigned, LeaderEffect
from roles.messages import Accept, Accepted
from roles.quorum import is_quorum


@dataclass(slots=True)
class InFlight:
    """One instance in phase 2 under the leader's ballot."""

    value: bytes
    tokens: tuple[int, ...]
    accepted_by: set[int]
    deadline: float
    retransmits: int = 0


@dataclass(slots=True)
class Pipeline:
    """A leader's phase 2: the commands queued, the instances in flight, and
    the values phase 1 recovered that are still to be proposed again."""

    config: LeaderConfig
    #: The value of an instance that phase 1 found empty (a hole).
    noop_value: bytes
    queue: deque[tuple[int, bytes]] = field(default_factory=deque)
    #: The tokens queued or in flight.
    tokens: set[int] = field(default_factory=set)
    in_flight: dict[int, InFlight] = field(default_factory=dict)
    #: Adopted values not yet proposed again.
    recovered: dict[int, bytes] = field(default_factory=dict)
    #: The highest instance the promises reported.
    recover_through: int = 0
    #: The next instance to start phase 2 for.
    next_slot: int = 1

    def restart(self, recovered: dict[int, bytes], recover_through: int, next_slot: int) -> None:
        """Begin a leadership: propose ``recovered`` (no-ops in its holes)
        through ``recover_through``, then new commands, from ``next_slot``."""
        self.recovered = recovered
        self.recover_through = recover_through
        self.next_slot = next_slot

    def enqueue(self, commands: Sequence[tuple[int, bytes]]) -> None:
        self.queue.extend(commands)
        self.tokens.update(token for token, _ in commands)

    def fill(
        self,
        now: float,
        ballot: Ballot,
        chosen_through: int,
        encode_batch: Callable[[Sequence[bytes]], bytes],
        compact_through: int = 0,
    ) -> list[LeaderEffect]:
        """Start phase 2 for as many instances as the window allows: first the
        recovered ones (adopted values, no-ops in the holes), then new commands."""
        effects: list[LeaderEffect] = []
        while self.next_slot - chosen_through <= self.config.window:
            instance = self.next_slot
            tokens: tuple[int, ...] = ()
            if instance <= self.recover_through:
                value = self.recovered.pop(instance, self.noop_value)
            elif self.queue:
                batch = self._next_batch()
                tokens = tuple(token for token, _ in batch)
                value = encode_batch([command for _, command in batch])
                effects.append(Assigned(instance, tokens))
            else:
                break
            self.next_slot += 1
            deadline = now + self.config.phase_timeout
            self.in_flight[instance] = InFlight(value, tokens, set(), deadline)
            accept = Accept(instance, ballot, value, chosen_through, compact_through)
            effects.append(SendToAcceptors(accept))
        return effects

    def on_accepted(self, msg: Accepted, acceptor_ids: frozenset[int]) -> InFlight | None:
        """Count ``msg`` (for the leader's ballot); the instance's entry once a
        majority makes it chosen, then forgotten. Raises before changing anything."""
        entry = self.in_flight.get(msg.instance)
        if entry is None:
            return None  # already chosen, or never ours
        if msg.value != entry.value:
            raise ProtocolError(
                f"acceptor {msg.acceptor_id} reports a value ballot {msg.ballot} never "
                f"carried for instance {msg.instance}"
            )
        if msg.acceptor_id in entry.accepted_by:
            return None
        entry.accepted_by.add(msg.acceptor_id)
        if not is_quorum(entry.accepted_by, acceptor_ids):
            return None
        del self.in_flight[msg.instance]
        self.tokens.difference_update(entry.tokens)
        return entry

    def stuck(self, now: float) -> int | None:
        """The first instance past its deadline with no retransmission left."""
        for instance in self._due(now):
            if self.in_flight[instance].retransmits >= self.config.max_retransmits:
                return instance
        return None

    def retransmit(
        self,
        now: float,
        ballot: Ballot,
        acceptor_ids: frozenset[int],
        chosen_through: int,
        compact_through: int = 0,
    ) -> list[LeaderEffect]:
        """Send every instance past its deadline again, to the acceptors that
        have not answered, and give it another ``phase_timeout``."""
        effects: list[LeaderEffect] = []
        for instance in self._due(now):
            entry = self.in_flight[instance]
            entry.retransmits += 1
            entry.deadline = now + self.config.phase_timeout
            missing = acceptor_ids - entry.accepted_by
            accept = Accept(instance, ballot, entry.value, chosen_through, compact_through)
            effects.append(SendToAcceptors(accept, missing))
        return effects

    def next_deadline(self) -> float:
        return min((entry.deadline for entry in self.in_flight.values()), default=NEVER)

    def forget_through(self, through: int) -> tuple[int, ...]:
        """Every instance <= ``through`` is chosen with a value this leader
        cannot see (an acceptor compacted it): stop proposing there. Returns
        the tokens of the commands in flight there, whose outcome is unknown
        (none, in practice: commands go only above every compacted instance)."""
        gone = sorted(i for i in self.in_flight if i <= through)
        tokens = tuple(t for i in gone for t in self.in_flight.pop(i).tokens)
        self.tokens.difference_update(tokens)
        self.recovered = {i: v for i, v in self.recovered.items() if i > through}
        self.next_slot = max(self.next_slot, through + 1)
        return tokens

    def drain(self) -> tuple[tuple[int, ...], tuple[int, ...]]:
        """Drop everything (leadership ends). Returns the tokens that were
        queued, never proposed, and those in flight, in instance order."""
        queued = tuple(token for token, _ in self.queue)
        assigned = tuple(t for i in sorted(self.in_flight) for t in self.in_flight[i].tokens)
        self.queue.clear()
        self.tokens.clear()
        self.in_flight.clear()
        self.recovered = {}
        self.recover_through = 0
        return queued, assigned

    def _next_batch(self) -> list[tuple[int, bytes]]:
        """The queued commands that go into one instance: at least one, then as
        many as ``max_batch`` and ``max_batch_bytes`` allow."""
        batch = [self.queue.popleft()]
        size = len(batch[0][1])
        while (
            self.queue
            and len(batch) < self.config.max_batch
            and size + len(self.queue[0][1]) <= self.config.max_batch_bytes
        ):
            size += len(self.queue[0][1])
            batch.append(self.queue.popleft())
        return batch

    def _due(self, now: float) -> list[int]:
        return sorted(i for i, e in self.in_flight.items() if e.deadline <= now)
