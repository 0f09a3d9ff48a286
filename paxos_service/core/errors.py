"""The errors of paxos-service, one class per concept, shared by the client
stub (which raises them to users) and the service (which raises them between
its own layers). :mod:`paxos_service.client` re-exports them."""

from __future__ import annotations

import grpc


class PaxosError(Exception):
    """Base class of every error this client raises."""

    def __init__(self, message: str, code: grpc.StatusCode | None = None) -> None:
        super().__init__(message)
        self.code = code


class InvalidArgumentError(PaxosError):
    """The request was malformed (empty or oversized value, instance 0, ...)."""


class UnavailableError(PaxosError):
    """No server could make progress (unreachable, or no quorum of acceptors)."""


class AuthenticationError(PaxosError):
    """With TLS: the handshake failed (code UNAUTHENTICATED): the server
    refused this client's certificate (not signed by the cluster CA, expired),
    or this client refused the server's. Or the server refused the
    certificate's role (PERMISSION_DENIED: a client certificate calling a
    peer-only method). Retrying does not help; the message says what to check.

    A plaintext client that a TLS server hangs up on gets
    :class:`UnavailableError` saying that the server may require TLS: without
    TLS, a dropped connection is not proof of a refusal."""


class DeadlineExceededError(PaxosError):
    """The deadline passed. For ``propose`` the outcome is unknown: the value
    may still be chosen. Proposing again (or ``get``) finds out safely."""


class OutcomeUnknownError(PaxosError):
    """A write may or may not be chosen: it reached a leader that stopped
    leading before it knew. Raised inside the service too (the log driver to
    the proposer servicer, the appender to the key-value servicer).

    For a key-value write (``client_id`` and ``sequence`` set): the write's
    deadline passed after an attempt that may have been applied. Sending the
    same request again is safe (the state machine applies a
    ``(client_id, sequence)`` once), and ``kv.outcome(client_id, sequence)``
    says whether it was applied and what it returned."""

    def __init__(
        self,
        message: str,
        code: grpc.StatusCode | None = None,
        *,
        client_id: int | None = None,
        sequence: int | None = None,
    ) -> None:
        super().__init__(message, code)
        self.client_id = client_id
        self.sequence = sequence


class CompactedError(PaxosError):
    """A watch asked for history that is gone: every change through
    ``compact_revision`` was discarded (``--kv-retain-revisions``). Read the
    current state, then watch from ``compact_revision + 1`` or later."""

    def __init__(
        self,
        message: str,
        compact_revision: int,
        code: grpc.StatusCode | None = grpc.StatusCode.OUT_OF_RANGE,
    ) -> None:
        super().__init__(message, code)
        self.compact_revision = compact_revision


class NotLeaderError(PaxosError):
    """A write was refused before it was given an instance, so it was not
    appended and may be sent again: this proposer does not lead (or, from a
    learner, no proposer took it in time). ``leader_address`` is the leader's
    address when known."""

    def __init__(
        self,
        message: str,
        leader_address: str | None = None,
        code: grpc.StatusCode | None = grpc.StatusCode.FAILED_PRECONDITION,
    ) -> None:
        super().__init__(message, code)
        self.leader_address = leader_address
