"""Ballots (proposal numbers): unique and totally ordered, as Paxos requires.

A ballot is ``(round, proposer_id)``. Proposers never share an id, so two
proposers can never issue the same ballot, and comparing the tuple orders all
ballots. ``ZERO_BALLOT`` means "none" and is lower than every real ballot; we
use it instead of ``None`` so that comparisons never need a special case.
"""

from __future__ import annotations

from dataclasses import dataclass

#: Ballot fields are stored in SQLite INTEGER columns (signed 64-bit).
MAX_BALLOT_FIELD = 2**63 - 1


@dataclass(frozen=True, order=True, slots=True)
class Ballot:
    round: int
    proposer_id: int

    def __post_init__(self) -> None:
        if not (0 <= self.round <= MAX_BALLOT_FIELD and 0 <= self.proposer_id <= MAX_BALLOT_FIELD):
            raise ValueError(f"ballot fields must be in [0, 2**63-1]: {self!r}")

    @property
    def is_zero(self) -> bool:
        """True for the "no ballot" sentinel: round 0 is never issued."""
        return self.round == 0

    def successor(self, proposer_id: int, at_least_round: int = 0) -> Ballot:
        """The next ballot ``proposer_id`` may issue above both this ballot and
        ``at_least_round`` (the highest round it has seen from others)."""
        return Ballot(max(self.round, at_least_round) + 1, proposer_id)

    def __str__(self) -> str:
        return f"{self.round}.{self.proposer_id}"


ZERO_BALLOT = Ballot(0, 0)
