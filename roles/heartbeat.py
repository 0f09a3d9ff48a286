"""The message between proposers: the leader's heartbeat.

Proposers talk to each other only for leadership. The leader sends a
:class:`Heartbeat` to every peer; the answer is the highest ballot the peer
has seen (:class:`~roles.leader_effects.AnswerHeartbeat`), so a stale leader
learns at once that it has been replaced.
"""

from __future__ import annotations

from dataclasses import dataclass

from roles.ballot import Ballot


@dataclass(frozen=True, slots=True)
class Heartbeat:
    """The leader of ``ballot`` is alive; every instance <= ``chosen_through`` is chosen."""

    ballot: Ballot
    proposer_id: int
    chosen_through: int
