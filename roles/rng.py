"""The random source a role is given: roles draw no randomness of their own,
so that a test or a simulation replays a run from its seed."""

from __future__ import annotations

from typing import Protocol


class RandomSource(Protocol):
    """What a role needs of a random generator (``random.Random`` fits)."""

    def uniform(self, a: float, b: float) -> float: ...
