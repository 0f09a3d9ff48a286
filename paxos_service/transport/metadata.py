"""gRPC metadata keys and status details that client and servers agree on:
one definition each, read by the client stub and written by the servicers."""

#: Trailing metadata: the address of the proposer that leads, when known.
LEADER_METADATA = "paxos-leader"
#: Status details prefix of a write whose outcome is unknown (ABORTED).
OUTCOME_UNKNOWN = "outcome unknown"
#: Trailing metadata: why the outcome is unknown (``forgotten``: the learner
#: no longer remembers the request).
OUTCOME_METADATA = "paxos-outcome"
#: Trailing metadata of a Watch that fell behind: the revision to resume from.
WATCH_RESUME_METADATA = "paxos-watch-resume-revision"
#: Trailing metadata of a Watch from a compacted revision (OUT_OF_RANGE): the
#: revision through which history is gone (etcd's ``compact_revision``).
COMPACT_REVISION_METADATA = "paxos-compact-revision"
#: Trailing metadata of an acceptor's OUT_OF_RANGE for a log instance at or
#: below its compaction point: the point, as a decimal string.
COMPACTED_THROUGH_METADATA = "paxos-compacted-through"
