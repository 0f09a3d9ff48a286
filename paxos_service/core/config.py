"""Configuration shared by the servers, the client and the CLI.

Every server option can also come from an environment variable (``PAXOS_ID``,
``PAXOS_LISTEN``, ...) so that Kubernetes can configure pods without flags.
Parsing errors raise :class:`ConfigError` with a message that names the option.
"""

from __future__ import annotations

import argparse
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TypeVar

#: Default cap on a proposed value, in bytes (configurable per server).
DEFAULT_MAX_VALUE_BYTES = 1024 * 1024
#: Watch history a learner keeps by default: bounded, with room for watchers
#: that reconnect after a while (about 10 MB of events at 100-byte values).
DEFAULT_KV_RETAIN_REVISIONS = 100_000
#: Log a learner applies between two snapshots by default: the acceptors keep
#: one to two times this much log above the compaction point
#: (roles/compaction.py). At 1,400 puts/s that is a snapshot every few minutes.
DEFAULT_RETAIN_LOG_BYTES = 32 * 1024 * 1024
#: A learner refuses writes that add data once its store's data takes
#: this much disk (etcd's default quota); 0: no quota.
DEFAULT_QUOTA_BYTES = 2 * 1024 * 1024 * 1024
#: Instances are numbered from 1 and stored in signed 64-bit SQLite integers.
MAX_INSTANCE = 2**63 - 1
DEFAULT_SHUTDOWN_GRACE = 5.0

_T = TypeVar("_T")
_POD_ORDINAL = re.compile(r"^[a-z0-9]([-a-z0-9.]*[a-z0-9])?-(\d+)$")


class ConfigError(ValueError):
    """A configuration value is missing or invalid; the message names it."""


def argparse_type(fn: Callable[[str], _T], name: str) -> Callable[[str], _T]:
    """An argparse ``type=`` from a parser that raises :class:`ConfigError`:
    the error becomes a usage error (exit 2) naming the problem, and ``name``
    is what argparse calls the value in its messages."""

    def convert(text: str) -> _T:
        try:
            return fn(text)
        except ConfigError as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    convert.__name__ = name
    return convert


def parse_node_id(text: str) -> int:
    """A node id: a non-negative integer, or a StatefulSet pod name such as
    ``paxos-acceptor-2`` whose trailing ordinal is the id."""
    text = text.strip()
    if text.isdigit():
        value = int(text)
    else:
        match = _POD_ORDINAL.match(text)
        if match is None:
            raise ConfigError(
                f"invalid node id {text!r}: expected an integer or a pod name ending in -<ordinal>"
            )
        value = int(match.group(2))
    if value > 2**63 - 1:
        raise ConfigError(f"node id {text!r} is too large")
    return value


def parse_address(text: str) -> str:
    """``HOST:PORT`` (``[v6]:PORT`` for IPv6) with a port in 0..65535."""
    text = text.strip()
    host, sep, port = text.rpartition(":")
    if not sep or not host or not port.isdigit() or int(port) > 65535:
        raise ConfigError(f"invalid address {text!r}: expected HOST:PORT, e.g. 127.0.0.1:50051")
    return text


def parse_address_list(text: str) -> list[str]:
    """A comma-separated list of addresses; empty entries are an error."""
    parts = [p for p in (s.strip() for s in text.split(",")) if p]
    if not parts:
        raise ConfigError("expected a comma-separated list of HOST:PORT addresses")
    addresses = [parse_address(p) for p in parts]
    duplicates = {a for a in addresses if addresses.count(a) > 1}
    if duplicates:
        raise ConfigError(f"address listed twice: {', '.join(sorted(duplicates))}")
    return addresses


def parse_positive_float(text: str, what: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{what} must be a number of seconds, got {text!r}") from None
    if not value > 0:
        raise ConfigError(f"{what} must be > 0, got {text!r}")
    return value


@dataclass(frozen=True)
class TlsFiles:
    """PEM files for TLS: the cluster CA that signs every peer and client
    certificate, and this process's own certificate and key (used both to
    serve and to dial peers). See paxos_service/transport/tls.py and ``paxos certs``."""

    ca: Path
    cert: Path
    key: Path


@dataclass(frozen=True)
class ServerConfig:
    """What every role's server needs."""

    node_id: int
    listen: str
    shutdown_grace: float = DEFAULT_SHUTDOWN_GRACE
    max_value_bytes: int = DEFAULT_MAX_VALUE_BYTES
    #: None means plaintext, which the CLI only allows with an explicit --insecure.
    tls: TlsFiles | None = None
    #: HOST:PORT to serve Prometheus metrics on over HTTP; None serves none.
    metrics_listen: str | None = None
    #: HOST:PORT to serve grpc.health.v1 alone on, in plaintext, for probes
    #: that cannot do TLS (Kubernetes' gRPC probes); None serves none.
    health_listen: str | None = None


@dataclass(frozen=True)
class AcceptorConfig(ServerConfig):
    db_path: Path = Path("acceptor.db")
    cluster_id: str = "paxos"
    #: Instances kept in memory at most; older ones are read from disk when
    #: asked for. After an eviction the newest half stay.
    max_resident_instances: int = 20_000
    #: Most bytes one page of a PromiseRange carries (0: ``max_value_bytes``,
    #: so that a page always fits a message). Smaller only in tests.
    promise_page_bytes: int = 0
    #: Skip what this acceptor knows is chosen in a PromiseRange (a bounded
    #: phase 1). Off only in the simulation, which covers both paths.
    skip_known_chosen: bool = True


@dataclass(frozen=True)
class ProposerConfig(ServerConfig):
    #: Acceptor addresses; the acceptor at position i runs with id i.
    acceptors: list[str] = field(default_factory=list)
    learners: list[str] = field(default_factory=list)
    #: Every proposer's address in id order (this one included); enables the
    #: replicated log, with leader election among them.
    proposers: list[str] = field(default_factory=list)
    #: Upper bound on one Propose call when the client sets no deadline.
    propose_timeout: float = 10.0
    #: Seconds to wait for a quorum in one phase before retrying higher.
    phase_timeout: float = 1.0
    #: The replicated log's leader: heartbeat period and election timeout
    #: (a follower campaigns after a random time in [T, 2T) without one).
    heartbeat_interval: float = 0.05
    election_timeout: float = 0.3
    #: Log instances in phase 2 at once, and commands per instance.
    window: int = 4
    max_batch: int = 512


@dataclass(frozen=True)
class LearnerConfig(ServerConfig):
    acceptors: list[str] = field(default_factory=list)
    #: Proposers to append KV commands through (the leader is found among them).
    proposers: list[str] = field(default_factory=list)
    #: The learner's replica of the key-value store; None serves no KV service.
    db_path: Path | None = None
    #: Seconds to wait for acceptors when asked about an instance it was not told of.
    read_timeout: float = 2.0
    #: Watch history the KV replica keeps: the last this many revisions
    #: (0: all). Older history is deleted; a Watch from there gets
    #: OUT_OF_RANGE with the compact revision.
    kv_retain_revisions: int = DEFAULT_KV_RETAIN_REVISIONS
    #: Every learner's address in id order (this one included): where this
    #: one fetches a snapshot when the acceptors compacted what it needs.
    learners: list[str] = field(default_factory=list)
    #: Take a snapshot once this many bytes of log were applied since the last.
    retain_log_bytes: int = DEFAULT_RETAIN_LOG_BYTES
    #: Puts and compare-and-swaps get RESOURCE_EXHAUSTED while the store's data
    #: (its pages in use) take more than this (0: no quota).
    quota_bytes: int = DEFAULT_QUOTA_BYTES
