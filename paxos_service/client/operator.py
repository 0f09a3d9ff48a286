"""The client side of ``OperatorService``: ask nodes, render the answers.

``paxos status`` and ``paxos explain`` (:mod:`paxos_service.cli.status`) are
thin shells around this module, which holds everything that needs gRPC, so
that the ``paxos`` command starts without loading gRPC for commands that do
not talk to a cluster.

``status`` probes every node at once (health and ``GetNodeStatus`` on one
channel each, with a short deadline), so a dead or blackholed node costs one
timeout in total, not one per node; the verdict on the whole cluster is the
worst node's.
"""

from __future__ import annotations

import asyncio
import json
import textwrap
from collections.abc import Sequence
from dataclasses import dataclass

import grpc
from google.protobuf.json_format import MessageToDict
from grpc_health.v1 import health_pb2, health_pb2_grpc

from paxos_service.core import log_entry
from paxos_service.core.config import ConfigError, TlsFiles
from paxos_service.transport import tls
from paxos_service.transport.channels import channel_options
from paxos_service.transport.diagnostics import FRESH_CONNECTION, rpc_reason
from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc

#: A reason longer than this is cut in the table and printed whole below it.
_CELL_REASON = 32
# Answers can carry values of up to the servers' default limit; with --watch,
# each round connects afresh, so a node that came back shows up at once.
_CHANNEL_OPTIONS = [*channel_options(1024 * 1024), FRESH_CONNECTION]

# Status ------------------------------------------------------------------------

SERVING = "SERVING"
NOT_SERVING = "NOT_SERVING"
DOWN = "DOWN"


@dataclass
class NodeReport:
    """What one listed node said (or why it said nothing)."""

    role: str
    position: int
    address: str
    health: str = DOWN
    reason: str = ""
    status: pb.GetNodeStatusResponse | None = None
    status_error: str = ""

    @property
    def node_id(self) -> int:
        return self.status.node_id if self.status is not None else self.position

    @property
    def wrong_role(self) -> str:
        """Non-empty if another role answers at this address."""
        if self.status is None or self.status.role == pb.NODE_ROLE_UNSPECIFIED:
            return ""
        actual = pb.NodeRole.Name(self.status.role).removeprefix("NODE_ROLE_").lower()
        return "" if actual == self.role else actual

    @property
    def ok(self) -> bool:
        return self.health == SERVING and not self.wrong_role


async def probe(
    role: str, position: int, address: str, files: TlsFiles | None, timeout: float
) -> NodeReport:
    """Health and GetNodeStatus of one node, asked at once on one channel."""
    report = NodeReport(role, position, address)
    try:
        channel = tls.aio_channel(address, files, _CHANNEL_OPTIONS)
    except ConfigError as exc:  # the TLS files went bad during --watch
        report.reason = str(exc)
        return report
    async with channel:
        health: health_pb2.HealthCheckResponse | BaseException
        status: pb.GetNodeStatusResponse | BaseException
        health, status = await asyncio.gather(
            health_pb2_grpc.HealthStub(channel).Check(
                health_pb2.HealthCheckRequest(service=""), timeout=timeout
            ),
            pb_grpc.OperatorServiceStub(channel).GetNodeStatus(
                pb.GetNodeStatusRequest(), timeout=timeout
            ),
            return_exceptions=True,
        )
    if isinstance(health, BaseException):
        report.reason = rpc_reason(health, with_tls=files is not None)
        return report
    report.health = health_pb2.HealthCheckResponse.ServingStatus.Name(health.status)
    if isinstance(status, BaseException):
        report.status_error = rpc_reason(status, with_tls=files is not None)
    else:
        report.status = status
        if status.HasField("acceptor") and status.acceptor.status_reason:
            report.reason = status.acceptor.status_reason
    return report


async def probe_all(
    nodes: Sequence[tuple[str, int, str]], files: TlsFiles | None, timeout: float
) -> list[NodeReport]:
    return list(await asyncio.gather(*(probe(r, i, a, files, timeout) for r, i, a in nodes)))


@dataclass(frozen=True)
class Leader:
    """Who leads the log, as the proposers see it."""

    text: str
    node_id: int | None = None
    address: str = ""
    chosen_through: int = 0


def find_leader(reports: Sequence[NodeReport]) -> Leader:
    proposers = [
        r for r in reports if r.role == "proposer" and r.status is not None and not r.wrong_role
    ]
    logging = [r for r in proposers if r.status is not None and r.status.proposer.log_enabled]
    if not logging:
        if proposers:
            return Leader("none: no proposer runs the replicated log (start them with --proposers)")
        return Leader("unknown: no proposer answered")
    claims = [r for r in logging if r.status is not None and r.status.proposer.is_leader]
    if len(claims) == 1:
        s = claims[0].status
        assert s is not None
        return Leader(
            f"proposer {s.node_id} at {claims[0].address} (ballot "
            f"{s.proposer.ballot.round}.{s.proposer.ballot.proposer_id}); log chosen through "
            f"{s.proposer.chosen_through}, next instance {s.proposer.next_instance}",
            s.node_id,
            claims[0].address,
            s.proposer.chosen_through,
        )
    if claims:
        ids = ", ".join(str(r.node_id) for r in claims)
        return Leader(
            f"proposers {ids} each claim to lead: a duel, which ends when the lower ballot "
            "hears of the higher"
        )
    known = {
        r.status.proposer.leader_id for r in logging if r.status and r.status.proposer.has_leader
    }
    if known:
        ids = ", ".join(str(i) for i in sorted(known))
        return Leader(f"proposer {ids} per the others, but it does not answer as leader")
    return Leader("none: an election is under way, or no proposer can reach a majority")


def _log_cell(report: NodeReport) -> str:
    s = report.status
    if s is None:
        return f"? ({report.status_error})" if report.status_error else "-"
    if s.HasField("acceptor"):
        a = s.acceptor
        cell = f"accepted<={a.highest_accepted_instance}"
        if a.HasField("range_ballot"):
            cell += (
                f" range>={a.range_from_instance}@{a.range_ballot.round}."
                f"{a.range_ballot.proposer_id}"
            )
        if a.no_vote_through:
            cell += f" no-vote<={a.no_vote_through}"
        if a.compacted_through:
            cell += f" compacted<={a.compacted_through}"
        return cell
    if s.HasField("proposer"):
        p = s.proposer
        if not p.log_enabled:
            return "log off"
        cell = f"chosen<={p.chosen_through} next={p.next_instance}"
        if p.ballot.round:  # a proposer that never campaigned has no ballot
            cell += f" ballot={p.ballot.round}.{p.ballot.proposer_id}"
        if p.compact_through:
            cell += f" compact<={p.compact_through}"
        return cell
    if s.HasField("learner"):
        lr = s.learner
        if not lr.kv_enabled:
            return f"decisions={lr.decisions_known}"
        cell = f"applied={lr.applied_instance} decided<={lr.highest_decided_instance}"
        if lr.snapshot_index:
            cell += f" snapshot<={lr.snapshot_index}"
        return cell
    return "-"


def _disk_cell(report: NodeReport) -> str:
    s = report.status
    if s is None:
        return "-"
    if s.HasField("acceptor"):
        return human_bytes(s.acceptor.disk_bytes)
    if s.HasField("learner") and s.learner.kv_enabled:
        return human_bytes(s.learner.disk_bytes)
    return "-"


def human_bytes(count: int) -> str:
    """``count`` bytes for a person: 512 B, 3.2 KiB, 41.0 MiB, ..."""
    value = float(count)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{count} B" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    raise AssertionError("unreachable")


def compaction_summary(reports: Sequence[NodeReport]) -> str:
    """One line on the compaction point: where the acceptors stand, and the
    learners' snapshots that cover the log below it."""
    points = [
        r.status.acceptor.compacted_through
        for r in reports
        if r.status is not None and r.status.HasField("acceptor")
    ]
    snapshots = [
        f"learner {r.node_id} {r.status.learner.snapshot_index}"
        for r in reports
        if r.status is not None and r.status.HasField("learner") and r.status.learner.kv_enabled
    ]
    if not any(points):
        return "compaction: none yet (the acceptors hold the whole log)"
    return (
        f"compaction: the acceptors dropped the log through instance {min(points)}"
        f"{'' if min(points) == max(points) else f'-{max(points)}'}; snapshots: "
        + (", ".join(snapshots) or "none reported")
    )


def _leader_cell(report: NodeReport) -> str:
    s = report.status
    if s is None or not s.HasField("proposer") or not s.proposer.log_enabled:
        return "-"
    if s.proposer.is_leader:
        return "self"
    return f"proposer {s.proposer.leader_id}" if s.proposer.has_leader else "none"


def learner_lag(report: NodeReport, leader: Leader) -> int | None:
    """Instances the cluster has chosen that this learner has not applied:
    what it knows it is missing, or what the leader has chosen beyond it."""
    s = report.status
    if s is None or not s.HasField("learner") or not s.learner.kv_enabled:
        return None
    behind_leader = max(0, leader.chosen_through - s.learner.applied_instance)
    return max(s.learner.lag_instances, behind_leader)


def _health_cell(report: NodeReport) -> str:
    if report.wrong_role:
        return f"WRONG ROLE: a {report.wrong_role} answers"
    if report.health == DOWN:
        reason = report.reason
        if len(reason) > _CELL_REASON:
            reason = reason[: _CELL_REASON - 3] + "..."
        return f"DOWN: {reason}"
    if report.health == NOT_SERVING and report.status and report.status.HasField("acceptor"):
        standing = pb.AcceptorStatus.Name(report.status.acceptor.status)
        return f"NOT_SERVING ({standing.removeprefix('ACCEPTOR_STATUS_').lower()})"
    return report.health


def render_table(reports: Sequence[NodeReport]) -> str:
    leader = find_leader(reports)
    header = ("ROLE", "ID", "ADDRESS", "HEALTH", "LEADER", "LOG", "LAG", "DISK")
    rows = []
    for r in reports:
        lag = learner_lag(r, leader)
        rows.append(
            (
                r.role,
                str(r.node_id),
                r.address,
                _health_cell(r),
                _leader_cell(r),
                _log_cell(r),
                "-" if lag is None else str(lag),
                _disk_cell(r),
            )
        )
    widths = [max(len(row[i]) for row in (header, *rows)) for i in range(len(header))]
    lines = [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in (header, *rows)
    ]
    lines.append("")
    lines.append(f"leader: {leader.text}")
    lines.append(compaction_summary(reports))
    # Reasons too long for the table, once each (a cluster-wide TLS mistake
    # makes every node down for the same reason).
    notes: dict[str, list[str]] = {}
    for r in reports:
        if r.reason and (r.health != DOWN or len(r.reason) > _CELL_REASON):
            notes.setdefault(r.reason, []).append(f"{r.role} {r.node_id}")
    for reason, names in notes.items():
        lines.append(f"{', '.join(names)}: {reason}")
    bad = [r for r in reports if not r.ok]
    lines.append(
        f"all {len(reports)} nodes serving"
        if not bad
        else f"{len(bad)} of {len(reports)} nodes not serving"
    )
    return "\n".join(lines)


def render_json(reports: Sequence[NodeReport]) -> str:
    leader = find_leader(reports)
    nodes = []
    for r in reports:
        nodes.append(
            {
                "role": r.role,
                "id": r.node_id,
                "address": r.address,
                "health": r.health,
                "reason": r.reason,
                "wrong_role": r.wrong_role or None,
                "leader": _leader_cell(r),
                "log": _log_cell(r),
                "lag": learner_lag(r, leader),
                "status": MessageToDict(r.status, preserving_proto_field_name=True)
                if r.status is not None
                else None,
                "status_error": r.status_error or None,
            }
        )
    return json.dumps(
        {
            "healthy": all(r.ok for r in reports),
            "leader": {
                "text": leader.text,
                "id": leader.node_id,
                "address": leader.address or None,
                "chosen_through": leader.chosen_through,
            },
            "nodes": nodes,
        }
    )


# Explain -----------------------------------------------------------------------


def describe_value(value: pb.ExplainedValue, width: int = 40) -> str:
    """A short, one-line description: quoted text, a log entry's commands, or
    the size and digest of anything else. The nodes use it in their summaries
    too, so that a value reads the same in the summary and the table."""
    if value.value.startswith(log_entry.MAGIC):
        entry = None if value.truncated else log_entry.decode(value.value)
        if entry is None:
            return f"log entry ({value.size} bytes)"
        if entry.noop:
            return "log no-op"
        ops = [_describe_command(c) for c in entry.commands]
        shown = ", ".join(ops[:3]) + (", ..." if len(ops) > 3 else "")
        return f"log entry, {len(ops)} command{'s' if len(ops) != 1 else ''} ({shown})"
    try:
        text = value.value.decode()
    except UnicodeDecodeError:
        text = ""
    if text and text.isprintable() and not value.truncated and len(text) <= width:
        return repr(text)
    if text and text.isprintable():
        return repr(text[:width]) + f"... ({value.size} bytes)"
    return f"{value.size} bytes, sha256 {value.sha256.hex()[:12]}"


def _describe_command(command: pb.Command) -> str:
    op = command.WhichOneof("op")
    key = {
        "put": command.put.key,
        "delete": command.delete.key,
        "compare_and_swap": command.compare_and_swap.key,
        "get": command.get.key,
        "range": command.range.prefix,
    }.get(op or "", "")
    name = {"compare_and_swap": "cas", "delete": "del"}.get(op or "", op or "?")
    return f"{name} {key[:24]!r}" if op else "?"


def _ballot(msg: pb.Ballot) -> str:
    return f"{msg.round}.{msg.proposer_id}"


def _key(msg: pb.Ballot) -> tuple[int, int]:
    return (msg.round, msg.proposer_id)


def render_explanation(answer: pb.ExplainInstanceResponse, address: str) -> str:
    who = pb.NodeRole.Name(answer.answered_by_role).removeprefix("NODE_ROLE_").lower()
    verdict = pb.InstanceVerdict.Name(answer.verdict).removeprefix("INSTANCE_VERDICT_")
    lines = textwrap.wrap(
        f"instance {answer.instance}: {answer.summary}", width=100, subsequent_indent="  "
    )
    lines.append(
        f"verdict {verdict}; asked {who} {answer.answered_by_id} at {address}; "
        f"{answer.quorum} of {len(answer.acceptors)} acceptors make a majority"
    )
    if answer.log_chosen_through or answer.log_next_instance:
        lines.append(
            f"the {who}'s log: chosen through {answer.log_chosen_through}, "
            f"next instance {answer.log_next_instance}"
        )
    rows: list[tuple[str, ...]] = [
        ("ACCEPTOR", "ADDRESS", "STATUS", "PROMISED", "ACCEPTED", "VALUE")
    ]
    for a in answer.acceptors:
        if not a.reachable:
            rows.append((str(a.acceptor_id), a.address, f"DOWN: {a.error}", "", "", ""))
            continue
        promised = _ballot(a.promised_ballot) if a.HasField("promised_ballot") else "-"
        if a.HasField("range_promised_ballot") and _key(a.range_promised_ballot) >= _key(
            a.instance_promised_ballot
        ):
            promised += f" (range>={a.range_from_instance})"
        accepted = _ballot(a.accepted_ballot) if a.HasField("accepted_ballot") else "-"
        value = describe_value(a.accepted_value) if a.HasField("accepted_value") else "-"
        status = pb.AcceptorStatus.Name(a.status).removeprefix("ACCEPTOR_STATUS_")
        if a.no_vote:
            status += " (no vote here)"
        rows.append((str(a.acceptor_id), a.address, status, promised, accepted, value))
    lines += ["", *_columns(rows)]
    if answer.learners:
        rows = [("LEARNER", "ADDRESS", "DECIDED", "VALUE")]
        for lr in answer.learners:
            ident = str(lr.learner_id) if lr.reachable else "?"
            if not lr.reachable:
                rows.append((ident, lr.address, f"DOWN: {lr.error}", ""))
                continue
            decided = "yes" if lr.decided else "no"
            if lr.kv_enabled:
                decided += f" (applied through {lr.applied_instance})"
            if lr.HasField("value"):
                value = describe_value(lr.value) + f" at ballot {_ballot(lr.ballot)}"
            elif lr.applied:
                value = "(applied; not kept)"
            else:
                value = "-"
            rows.append((ident, lr.address, decided, value))
        lines += ["", *_columns(rows)]
    return "\n".join(lines)


def _columns(rows: Sequence[tuple[str, ...]]) -> list[str]:
    widths = [max(len(row[i]) for row in rows) for i in range(len(rows[0]))]
    return [
        "  ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)).rstrip()
        for row in rows
    ]


def explain(
    instance: int,
    addresses: Sequence[str],
    files: TlsFiles | None,
    timeout: float,
    value_limit: int = 0,
    *,
    log: bool = False,
) -> tuple[pb.ExplainInstanceResponse, str]:
    """The first answer among ``addresses``, tried in turn, and who gave it,
    about the log's ``instance`` (``log``) or the single-decree one.
    Raises LookupError naming every failure if none answers."""
    request = pb.ExplainInstanceRequest(
        instance=instance,
        value_limit=value_limit,
        space=pb.INSTANCE_SPACE_LOG if log else pb.INSTANCE_SPACE_UNSPECIFIED,
    )
    errors = []
    for address in addresses:
        with tls.sync_channel(address, files, _CHANNEL_OPTIONS) as channel:
            try:
                reply: pb.ExplainInstanceResponse = pb_grpc.OperatorServiceStub(
                    channel
                ).ExplainInstance(request, timeout=timeout)
            except grpc.RpcError as exc:
                if isinstance(exc, grpc.Call) and exc.code() is grpc.StatusCode.INVALID_ARGUMENT:
                    raise ValueError(exc.details()) from None
                errors.append(f"{address}: {rpc_reason(exc, with_tls=files is not None)}")
                continue
        if reply.answered_by_role == pb.NODE_ROLE_ACCEPTOR:
            errors.append(f"{address}: an acceptor answers there, not a proposer or learner")
            continue
        return reply, address
    raise LookupError("; ".join(errors))


def explanation_json(answer: pb.ExplainInstanceResponse, address: str) -> str:
    """The answer as JSON (protobuf's JSON mapping: bytes in base64, 64-bit
    integers as strings), plus the address that gave it."""
    return json.dumps(
        {"answered_by": address, **MessageToDict(answer, preserving_proto_field_name=True)}
    )
