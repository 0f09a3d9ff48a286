"""The effects both proposing roles return: what their caller must do after a step.

The single-decree :class:`~roles.proposer.Proposer` and the Multi-Paxos
:class:`~roles.leader.Leader` ask the world for the same three things: send a
message to the acceptors, wake them up later, tell the learners a value is
chosen. They say it with the same three classes, so that a driver, a test or a
simulation reads every role's effects the same way.
"""

from __future__ import annotations

from dataclasses import KW_ONLY, dataclass
from typing import Generic, TypeVar

from roles.ballot import Ballot
from roles.messages import Accept, Decide, Prepare, PrepareRange

#: What a role sends to acceptors: phase 1a (one instance or a range) or phase 2a.
M_co = TypeVar("M_co", bound=Prepare | PrepareRange | Accept, covariant=True)


# No slots: with them, a subscripted call such as ``SendToAcceptors[Accept](...)``
# fails on Python 3.11 (a frozen, slotted dataclass cannot take ``__orig_class__``).
@dataclass(frozen=True)
class SendToAcceptors(Generic[M_co]):
    """Send ``message`` to the acceptors in ``to`` (every acceptor when None).

    Generic in the message so that each role's effect type says what it sends:
    the proposer ``Prepare | Accept``, the leader ``PrepareRange | Accept``.
    """

    message: M_co
    to: frozenset[int] | None = None


#: A time that never comes: the deadline of a timer not in use.
NEVER = float("inf")


@dataclass(frozen=True, slots=True)
class SetTimer:
    """Call the role's ``on_timer`` at time ``at``; it replaces any earlier timer."""

    at: float


@dataclass(frozen=True, slots=True)
class Chosen:
    """A value is chosen: send :attr:`decide` to the learners.

    ``own_value_chosen``: the value is this role's own, the client's value
    (proposer) or a batch of the leader's commands, not one adopted from an
    earlier ballot nor a no-op. ``tokens``: the leader's commands in the value,
    now committed (empty for adopted values, no-ops and the single-decree proposer).
    """

    decide: Decide
    _: KW_ONLY
    own_value_chosen: bool = False
    tokens: tuple[int, ...] = ()

    @property
    def instance(self) -> int:
        return self.decide.instance

    @property
    def ballot(self) -> Ballot:
        return self.decide.ballot

    @property
    def value(self) -> bytes:
        return self.decide.value
