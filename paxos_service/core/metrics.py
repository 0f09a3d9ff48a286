"""Prometheus metrics for every role, defined in one place.

Two families (docs/metrics.md lists every metric and what to alert on):

* ``grpc_server_*``: the names, labels and code strings of go-grpc-prometheus,
  so that the dashboards and alerts written for Go services work unchanged.
  :mod:`paxos_service.transport.instrumentation` records them for every RPC a
  server handles, and :mod:`paxos_service.transport.metrics_http` serves them.
* ``paxos_*``: what the protocol does. The adapters in ``paxos_service``
  record them (``roles/`` stays pure: it has no clock and no metrics); this
  module only defines them and pre-binds label children, so that the hot
  path is an ``inc()`` or ``observe()`` on an object that already exists,
  with no label lookup or string formatting per message.

Every role is its own process, so the metrics live in the default registry
(which also carries ``process_*`` and ``python_*``) and carry no node label:
Prometheus adds ``instance``/``pod``. Tests that run several servers in one
process share the metrics: nothing breaks, counters add up and gauges show
whichever server wrote last.
"""

from __future__ import annotations

from typing import Any, TypeVar

import grpc
from prometheus_client import REGISTRY, Counter, Gauge, Histogram
from prometheus_client import disable_created_metrics as _disable_created_metrics

# ``*_created`` series add one per counter and histogram child; go-grpc-prometheus has none.
_disable_created_metrics()  # type: ignore[no-untyped-call]

M = TypeVar("M", Counter, Gauge, Histogram)


def _metric(
    cls: type[M], name: str, documentation: str, labels: tuple[str, ...] = (), **kw: Any
) -> M:
    """Create and register a metric; if this module is imported a second time
    (under another name, or reloaded), reuse the registered one instead of
    failing with a duplicate-registration error."""
    try:
        return cls(name, documentation, labels, **kw)
    except ValueError:
        base = name.removesuffix("_total") if cls is Counter else name
        names: dict[str, Any] = REGISTRY._names_to_collectors  # no public lookup exists
        existing = names.get(base)
        if not isinstance(existing, cls):
            raise
        return existing


# gRPC server metrics (go-grpc-prometheus) -----------------------------------------

_GRPC_LABELS = ("grpc_type", "grpc_service", "grpc_method")

GRPC_STARTED = _metric(
    Counter,
    "grpc_server_started_total",
    "Total number of RPCs started on the server.",
    _GRPC_LABELS,
)
GRPC_HANDLED = _metric(
    Counter,
    "grpc_server_handled_total",
    "Total number of RPCs completed on the server, regardless of success or failure.",
    (*_GRPC_LABELS, "grpc_code"),
)
GRPC_MSG_RECEIVED = _metric(
    Counter,
    "grpc_server_msg_received_total",
    "Total number of RPC stream messages received on the server.",
    _GRPC_LABELS,
)
GRPC_MSG_SENT = _metric(
    Counter,
    "grpc_server_msg_sent_total",
    "Total number of gRPC stream messages sent by the server.",
    _GRPC_LABELS,
)
GRPC_HANDLING_SECONDS = _metric(
    Histogram,
    "grpc_server_handling_seconds",
    "Histogram of response latency (seconds) of gRPC that had been application-level "
    "handled by the server.",
    _GRPC_LABELS,
)  # default buckets: prometheus.DefBuckets, as go-grpc-prometheus uses

#: grpc_code label values: Go's codes.Code.String(), as go-grpc-prometheus writes them.
GRPC_CODE_NAMES: dict[grpc.StatusCode, str] = {
    grpc.StatusCode.OK: "OK",
    grpc.StatusCode.CANCELLED: "Canceled",
    grpc.StatusCode.UNKNOWN: "Unknown",
    grpc.StatusCode.INVALID_ARGUMENT: "InvalidArgument",
    grpc.StatusCode.DEADLINE_EXCEEDED: "DeadlineExceeded",
    grpc.StatusCode.NOT_FOUND: "NotFound",
    grpc.StatusCode.ALREADY_EXISTS: "AlreadyExists",
    grpc.StatusCode.PERMISSION_DENIED: "PermissionDenied",
    grpc.StatusCode.RESOURCE_EXHAUSTED: "ResourceExhausted",
    grpc.StatusCode.FAILED_PRECONDITION: "FailedPrecondition",
    grpc.StatusCode.ABORTED: "Aborted",
    grpc.StatusCode.OUT_OF_RANGE: "OutOfRange",
    grpc.StatusCode.UNIMPLEMENTED: "Unimplemented",
    grpc.StatusCode.INTERNAL: "Internal",
    grpc.StatusCode.UNAVAILABLE: "Unavailable",
    grpc.StatusCode.DATA_LOSS: "DataLoss",
    grpc.StatusCode.UNAUTHENTICATED: "Unauthenticated",
}

# Paxos metrics ---------------------------------------------------------------------

#: Seconds, from a local fsync (~0.1 ms on a fast SSD) to a slow network round trip.
_LATENCY_BUCKETS = (
    0.0001,
    0.00025,
    0.0005,
    0.001,
    0.0025,
    0.005,
    0.01,
    0.025,
    0.05,
    0.1,
    0.25,
    0.5,
    1.0,
    2.5,
    5.0,
    10.0,
)
_COUNT_BUCKETS = (1, 2, 4, 8, 16, 32, 64, 128, 256, 512, 1024)
_BYTE_BUCKETS = (64, 256, 1024, 4096, 16384, 65536, 262144, 524288, 1048576, 4194304)

# Acceptor.
ACCEPTOR_PROMISES = _metric(
    Counter,
    "paxos_acceptor_promises_total",
    "Promises this acceptor made (phase 1b), by request: prepare (one instance) or "
    "prepare_range (every instance from one on, Multi-Paxos).",
    ("message",),
)
ACCEPTOR_ACCEPTS = _metric(
    Counter,
    "paxos_acceptor_accepts_total",
    "Accept requests this acceptor accepted (phase 2b), repeats of an accepted one included.",
)
ACCEPTOR_REJECTIONS = _metric(
    Counter,
    "paxos_acceptor_rejections_total",
    "Requests this acceptor rejected because it had promised a higher ballot, by request: "
    "prepare, prepare_range or accept.",
    ("message",),
)
ACCEPTOR_COMMIT_SECONDS = _metric(
    Histogram,
    "paxos_acceptor_commit_seconds",
    "Duration of one group commit on the storage thread: the SQLite transaction and its "
    "fsync. Every vote waits for one.",
    buckets=_LATENCY_BUCKETS,
)
ACCEPTOR_COMMIT_WRITES = _metric(
    Histogram,
    "paxos_acceptor_commit_writes",
    "Writes per group commit (instance states, plus the range promise): how many votes "
    "share one fsync.",
    buckets=_COUNT_BUCKETS,
)
ACCEPTOR_COMMIT_FAILURES = _metric(
    Counter,
    "paxos_acceptor_commit_failures_total",
    "Failed commits. After one the acceptor stops voting until restarted.",
)
PROMISED_PREPARE = ACCEPTOR_PROMISES.labels("prepare")
PROMISED_PREPARE_RANGE = ACCEPTOR_PROMISES.labels("prepare_range")
REJECTED_PREPARE = ACCEPTOR_REJECTIONS.labels("prepare")
REJECTED_PREPARE_RANGE = ACCEPTOR_REJECTIONS.labels("prepare_range")
REJECTED_ACCEPT = ACCEPTOR_REJECTIONS.labels("accept")

# Proposer, both modes: "single_decree" (Propose) and "multi_paxos" (the log leader).
_MODE = ("mode",)
PROPOSALS = _metric(
    Counter,
    "paxos_proposals_total",
    "Values this proposer set out to get chosen: Propose calls (single_decree); instances "
    "the leader started phase 2 for, no-ops and recovered values included (multi_paxos).",
    _MODE,
)
CHOSEN = _metric(
    Counter,
    "paxos_chosen_total",
    "Proposals that ended with a value chosen (not necessarily this proposer's own value, "
    "in single_decree).",
    _MODE,
)
REJECTIONS = _metric(
    Counter,
    "paxos_rejections_total",
    "Reject replies this proposer received from acceptors.",
    _MODE,
)
PREEMPTIONS = _metric(
    Counter,
    "paxos_preemptions_total",
    "Ballots this proposer abandoned because another proposer's higher ballot got there "
    "first: a proposal backing off to retry higher (single_decree), or a candidate or "
    "leader stepping down (multi_paxos).",
    _MODE,
)
PHASE1_SECONDS = _metric(
    Histogram,
    "paxos_phase1_seconds",
    "Successful phase 1: from sending Prepare (single_decree) or PrepareRange "
    "(multi_paxos, an election) to a majority of promises.",
    _MODE,
    buckets=_LATENCY_BUCKETS,
)
PHASE2_SECONDS = _metric(
    Histogram,
    "paxos_phase2_seconds",
    "Successful phase 2: from the first Accept for a value to a majority of Accepted.",
    _MODE,
    buckets=_LATENCY_BUCKETS,
)


class ProposerMetrics:
    """The proposer metrics of one mode, label children bound once."""

    __slots__ = ("chosen", "phase1", "phase2", "preemptions", "proposals", "rejections")

    def __init__(self, mode: str) -> None:
        self.proposals = PROPOSALS.labels(mode)
        self.chosen = CHOSEN.labels(mode)
        self.rejections = REJECTIONS.labels(mode)
        self.preemptions = PREEMPTIONS.labels(mode)
        self.phase1 = PHASE1_SECONDS.labels(mode)
        self.phase2 = PHASE2_SECONDS.labels(mode)


SINGLE_DECREE = ProposerMetrics("single_decree")
MULTI_PAXOS = ProposerMetrics("multi_paxos")

# The Multi-Paxos leader.
LEADER_BATCH_COMMANDS = _metric(
    Histogram,
    "paxos_leader_batch_commands",
    "Commands per log instance the leader proposed (its batch size).",
    buckets=_COUNT_BUCKETS,
)
LEADER_BATCH_BYTES = _metric(
    Histogram,
    "paxos_leader_batch_bytes",
    "Bytes of the value of each log instance carrying commands.",
    buckets=_BYTE_BUCKETS,
)
LEADER_RETRANSMITS = _metric(
    Counter,
    "paxos_leader_retransmits_total",
    "Accepts the leader sent again because an instance had no majority within the phase timeout.",
)
LEADER_CAMPAIGNS = _metric(
    Counter,
    "paxos_leader_campaigns_total",
    "Elections this proposer started (one PrepareRange round each).",
)
LEADER_QUORUM_LOST = _metric(
    Counter,
    "paxos_leader_quorum_lost_total",
    "Times this leader stepped down because an instance found no majority of acceptors "
    "after its retransmissions.",
)
LEADER_CHANGES = _metric(
    Counter,
    "paxos_leader_changes_seen_total",
    "Times the leader this proposer knows of became a different proposer (itself included).",
)
LEADER_IS_LEADER = _metric(
    Gauge, "paxos_leader_is_leader", "1 while this proposer leads the replicated log, else 0."
)
LEADER_CURRENT = _metric(
    Gauge,
    "paxos_leader_current_id",
    "The id of the proposer this proposer believes leads (itself included); -1 while it "
    "knows of none, as during an election.",
)
LEADER_CHOSEN_THROUGH = _metric(
    Gauge,
    "paxos_leader_chosen_through",
    "The highest instance n such that this proposer knows every instance <= n is chosen.",
)

# Learners and the KV replica.
LEARNER_DECISIONS = _metric(
    Counter,
    "paxos_learner_decisions_total",
    "Instances this learner newly learned as decided, by source: decide (told by a "
    "proposer) or acceptors (found by counting the acceptors' votes).",
    ("source",),
)
LEARNED_FROM_DECIDE = LEARNER_DECISIONS.labels("decide")
LEARNED_FROM_ACCEPTORS = LEARNER_DECISIONS.labels("acceptors")
LEARNER_APPLIED = _metric(
    Gauge,
    "paxos_learner_applied_instance",
    "The highest log instance applied to this learner's key-value store.",
)
LEARNER_DECIDED = _metric(
    Gauge,
    "paxos_learner_decided_instance",
    "The highest log instance this learner knows to be decided.",
)
LEARNER_LAG = _metric(
    Gauge,
    "paxos_learner_lag_instances",
    "Decided log instances this learner knows of but has not applied yet "
    "(decided_instance - applied_instance).",
)
LEARNER_APPLY_SECONDS = _metric(
    Histogram,
    "paxos_learner_apply_seconds",
    "Duration of applying one log instance to the key-value store (one SQLite transaction).",
    buckets=_LATENCY_BUCKETS,
)
LEARNER_APPLY_FAILURES = _metric(
    Counter,
    "paxos_learner_apply_failures_total",
    "Times this learner stopped applying the log after an error (it then serves nothing "
    "until restarted).",
)
LEARNER_CONFLICTS = _metric(
    Counter,
    "paxos_learner_conflicts_total",
    "Times this learner saw two different values chosen for one instance (a safety "
    "violation), by what showed the second one: decide or accepted (a majority). Any "
    "increase is a page: the learner has turned NOT_SERVING.",
    ("source",),
)
KV_WATCHERS = _metric(Gauge, "paxos_kv_watchers", "Watch streams open on this learner.")
KV_APPEND_BATCH = _metric(
    Histogram,
    "paxos_kv_append_batch_commands",
    "Commands per Append call this learner sent to the leader (client commands grouped).",
    buckets=_COUNT_BUCKETS,
)

# Compaction: snapshots, the compaction point, truncation, space on disk.
DISK_BYTES = _metric(
    Gauge,
    "paxos_disk_bytes",
    "Bytes this node's storage takes on disk (database and WAL; a learner's snapshot too).",
)
LEADER_COMPACT_THROUGH = _metric(
    Gauge,
    "paxos_leader_compact_through",
    "The compaction point T this proposer sends with its Accepts: every log instance <= T "
    "is in a majority of learners' snapshots.",
)
ACCEPTOR_COMPACTED_THROUGH = _metric(
    Gauge,
    "paxos_acceptor_compacted_through",
    "Votes for log instances <= this are deleted (or being deleted) on this acceptor.",
)
ACCEPTOR_TRUNCATED = _metric(
    Counter,
    "paxos_acceptor_truncated_instances_total",
    "Log instances whose votes this acceptor deleted below the compaction point.",
)
SNAPSHOT_INDEX = _metric(
    Gauge,
    "paxos_learner_snapshot_index",
    "Every log instance <= this is in this learner's latest durable snapshot.",
)
SNAPSHOT_BYTES = _metric(
    Gauge, "paxos_learner_snapshot_bytes", "Size of this learner's latest snapshot."
)
SNAPSHOT_SECONDS = _metric(
    Histogram,
    "paxos_learner_snapshot_seconds",
    "Time to take and write one snapshot (off the apply path).",
    buckets=_LATENCY_BUCKETS,
)
SNAPSHOT_INSTALLS = _metric(
    Counter,
    "paxos_learner_snapshot_installs_total",
    "Snapshots this learner fetched from a peer and installed (new, wiped or behind the "
    "compaction point).",
)
SNAPSHOT_TRANSFER_BYTES = _metric(
    Counter,
    "paxos_learner_snapshot_transfer_bytes_total",
    "Snapshot bytes this learner received from peers.",
)
QUOTA_BYTES = _metric(
    Gauge,
    "paxos_quota_bytes",
    "The disk quota of this learner's store and snapshot (0: none).",
)
QUOTA_EXCEEDED = _metric(
    Gauge,
    "paxos_quota_exceeded",
    "1 while this learner is over its disk quota and refuses puts and compare-and-swaps "
    "(RESOURCE_EXHAUSTED); reads, deletes and compaction go on. Alert on it.",
)
