"""Errors the protocol raises. Raising never changes a role's state."""


class ProtocolError(ValueError):
    """A message that no correct peer would send (zero ballot, wrong instance, ...).

    The role that raises it leaves its state exactly as it was, so the caller can
    report the error and carry on.
    """


class SafetyViolation(AssertionError):
    """Two different values were chosen for one instance. This must never happen;
    it is raised so that a bug is loud instead of silently corrupting data."""


class NotVoting(Exception):
    """The acceptor will not vote on this message (it is recovering and the
    instance lies in the range it must never vote on again; see
    :mod:`roles.recovery`). Not the sender's fault, so it is not a
    :class:`ProtocolError`: the sender should count the acceptor as unavailable.

    Like a ProtocolError, raising it leaves the acceptor's state unchanged.
    """


class Compacted(Exception):
    """The log instance lies at or below the acceptor's compaction point: it
    is chosen, its value lives in the learners' snapshots, and the acceptor's
    votes there are deleted (see :mod:`roles.compaction`). The sender needs no
    vote there: a proposer has nothing left to do, a learner installs a
    snapshot. Raising it leaves the acceptor's state unchanged."""

    def __init__(self, instance: int, compacted_through: int) -> None:
        super().__init__(
            f"log instance {instance} is compacted: every instance <= {compacted_through} "
            "is chosen and held in the learners' snapshots"
        )
        self.instance = instance
        self.compacted_through = compacted_through
