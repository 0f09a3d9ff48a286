"""How far the log is known chosen: a contiguous prefix, and the few beyond a gap.

Every proposer tracks it, leader or not: the leader starts phase 1 just above
it, and a follower passes it on when it campaigns. Instances are learned out of
order, so those chosen above a gap wait in :attr:`ChosenPrefix.above` until the
gap closes.
"""

from __future__ import annotations

from dataclasses import dataclass, field


@dataclass(slots=True)
class ChosenPrefix:
    """Every instance <= ``through`` is known chosen; ``above`` holds the ones
    known chosen past the first gap (the caller bounds how many it notes)."""

    through: int = 0
    above: set[int] = field(default_factory=set)

    def note(self, instance: int) -> None:
        """``instance`` is chosen."""
        if instance > self.through:
            self.above.add(instance)
            self.advance(self.through)

    def advance(self, through: int) -> None:
        """Every instance <= ``through`` is chosen; keep going through the
        instances known chosen above it, so that the prefix stays contiguous."""
        if through > self.through:
            self.through = through
            self.above = {i for i in self.above if i > through}
        while self.through + 1 in self.above:
            self.through += 1
            self.above.discard(self.through)
