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
