"""The five Paxos messages (plus Reject), as frozen dataclasses.

Names and fields match ``proto/paxos_service/v1/paxos.proto`` one to one; the
servers translate between the two and nothing else.
"""

from __future__ import annotations

from dataclasses import dataclass

from roles.ballot import ZERO_BALLOT, Ballot


@dataclass(frozen=True, slots=True)
class Prepare:
    """Phase 1a: promise to ignore ballots lower than ``ballot``."""

    instance: int
    ballot: Ballot


@dataclass(frozen=True, slots=True)
class Promise:
    """Phase 1b: ``acceptor_id`` promised ``ballot`` and reports its highest
    accepted proposal (``accepted_ballot`` is ZERO and value None if none)."""

    instance: int
    ballot: Ballot
    acceptor_id: int
    accepted_ballot: Ballot = ZERO_BALLOT
    accepted_value: bytes | None = None


@dataclass(frozen=True, slots=True)
class Accept:
    """Phase 2a: accept ``value`` under ``ballot``.

    ``chosen_through`` is the sender's knowledge, not part of the vote: every
    instance <= it is chosen. An acceptor remembers the highest it heard and
    reports it in :class:`PromiseRange`, so that a new leader's phase 1 skips
    the chosen prefix instead of reading the whole history back."""

    instance: int
    ballot: Ballot
    value: bytes
    chosen_through: int = 0
    #: The cluster's compaction point T, not part of the vote either: every
    #: instance <= T is chosen and in a majority of learners' durable
    #: snapshots (:mod:`roles.compaction`), so the acceptor may delete its
    #: votes there and refuses to vote there again.
    compact_through: int = 0


@dataclass(frozen=True, slots=True)
class Accepted:
    """Phase 2b: ``acceptor_id`` durably accepted ``value`` under ``ballot``."""

    instance: int
    ballot: Ballot
    acceptor_id: int
    value: bytes


@dataclass(frozen=True, slots=True)
class Reject:
    """No to a Prepare or Accept for ``ballot``: the acceptor has promised
    ``promised_ballot``, which is at least as high."""

    instance: int
    ballot: Ballot
    acceptor_id: int
    promised_ballot: Ballot


@dataclass(frozen=True, slots=True)
class Decide:
    """``value`` was chosen for ``instance`` (accepted by a majority under ``ballot``)."""

    instance: int
    ballot: Ballot
    value: bytes


@dataclass(frozen=True, slots=True)
class PrepareRange:
    """Multi-Paxos phase 1a: promise ``ballot`` for every instance >= ``from_instance``.

    ``page_from`` 0 asks for the promise. Any other value asks, under the
    promise this acceptor already made to ``ballot``, for the next page of
    its report, from instance ``page_from`` (see :class:`PromiseRange`)."""

    from_instance: int
    ballot: Ballot
    page_from: int = 0


@dataclass(frozen=True, slots=True)
class PromiseRange:
    """Multi-Paxos phase 1b: ``acceptor_id`` promised ``ballot`` for every
    instance >= ``from_instance``; ``accepted`` lists its accepted proposals
    there, in instance order, except those at or below ``chosen_through``.

    ``chosen_through``: the acceptor knows every instance <= it is chosen
    (from a leader's :class:`Accept`), so it does not report them. The report
    comes in pages no larger than a message may be: this page covers the
    instances from ``page_from`` (0: the first page, from ``from_instance``)
    up to ``next_page`` (0: the last page; else ask for the next one with
    ``PrepareRange(page_from=next_page)``)."""

    from_instance: int
    ballot: Ballot
    acceptor_id: int
    accepted: tuple[Accepted, ...] = ()
    chosen_through: int = 0
    page_from: int = 0
    next_page: int = 0


AcceptorReply = Promise | Accepted | Reject
