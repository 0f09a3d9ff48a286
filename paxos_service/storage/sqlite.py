"""Acceptor storage in SQLite through SQLAlchemy Core.

Durability settings (see shared FACTS and SQLite's docs):

* ``journal_mode=WAL`` with ``synchronous=FULL``: the WAL is fsynced at every
  commit, so a committed promise survives power loss. (WAL with NORMAL does not.)
* Python 3.11's sqlite3 driver does not BEGIN on its own, so we take over
  transaction control as SQLAlchemy's SQLite dialect docs describe, and begin
  every transaction with ``BEGIN IMMEDIATE`` so writers never deadlock.

The file also records which acceptor and cluster it belongs to; opening it as
another acceptor or cluster is refused. For identity safety (see
:mod:`paxos_service.node.identity`) it records its incarnation and status in
``meta``, and in ``members`` the incarnation it has seen for each peer.
"""

from __future__ import annotations

import contextlib
import sqlite3
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from sqlalchemy import (
    Column,
    Connection,
    Integer,
    LargeBinary,
    MetaData,
    String,
    Table,
    delete,
    func,
    select,
)
from sqlalchemy.dialects.sqlite import insert
from sqlalchemy.exc import SQLAlchemyError

from paxos_service.storage.contract import StorageCorrupt, StorageError
from paxos_service.storage.sqlite_setup import (
    disk_bytes,
    durable_engine,
    ensure_incremental_vacuum,
    reclaim_space,
)
from paxos_service.storage.sqlite_setup import error_reason as _reason
from roles import ZERO_BALLOT, AcceptorState, Ballot, RangePromise
from roles.recovery import AcceptorStatus, RecoveryPlan

SCHEMA_VERSION = "1"

metadata = MetaData()

acceptor_state = Table(
    "acceptor_state",
    metadata,
    Column("instance", Integer, primary_key=True, autoincrement=False),
    Column("promised_round", Integer, nullable=False),
    Column("promised_proposer_id", Integer, nullable=False),
    Column("accepted_round", Integer, nullable=False),
    Column("accepted_proposer_id", Integer, nullable=False),
    Column("accepted_value", LargeBinary, nullable=True),
)

# One row (id = 1) at most: the acceptor-wide Multi-Paxos promise.
range_promise_table = Table(
    "range_promise",
    metadata,
    Column("id", Integer, primary_key=True, autoincrement=False),
    Column("from_instance", Integer, nullable=False),
    Column("promised_round", Integer, nullable=False),
    Column("promised_proposer_id", Integer, nullable=False),
)

meta = Table(
    "meta",
    metadata,
    Column("key", String, primary_key=True),
    Column("value", String, nullable=False),
)

# The incarnation this acceptor has seen for each peer acceptor id.
members = Table(
    "members",
    metadata,
    Column("acceptor_id", Integer, primary_key=True, autoincrement=False),
    Column("incarnation", String, nullable=False),
)


class SqliteAcceptorStorage:
    """An acceptor's state in one SQLite file. Not thread-safe: the acceptor
    server calls it from one dedicated thread."""

    def __init__(self, path: Path, *, acceptor_id: int, cluster_id: str) -> None:
        self.path = path
        self.acceptor_id = acceptor_id
        self.cluster_id = cluster_id
        self.incarnation = ""
        #: Files from before identity tracking have no status: they vote.
        self.status = AcceptorStatus.VOTING
        #: Recovered acceptors never vote on instances <= this (0: none).
        self.no_vote_through = 0
        self.chosen_through = 0
        #: Votes for log instances <= this are deleted or being deleted.
        self.compacted_through = 0
        self.created = False
        self._engine = durable_engine(path)
        self._conn: Connection | None = None

    def open(self) -> None:
        """Open or create the file and check that it is ours and readable.

        Raises :class:`StorageCorrupt` with a message an operator can act on.
        """
        existed = self.path.exists()
        if existed and self.path.stat().st_size == 0:
            raise StorageCorrupt(
                f"{self.path} exists but is empty: refusing to start an acceptor with no "
                "memory over a file that should hold its promises. If this acceptor is new, "
                "delete the file."
            )
        if not existed and not self.path.parent.is_dir():
            raise StorageCorrupt(f"directory {self.path.parent} does not exist")
        try:
            self._conn = self._engine.connect()
            self._check_pragmas()
            if existed:
                self._check_integrity()
                self._check_identity()
                with self._connection().begin():
                    metadata.create_all(self._connection())  # tables added since
            else:
                self._initialise()
            ensure_incremental_vacuum(self._connection())
        except StorageCorrupt:
            self.close()
            raise
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            self.close()
            raise StorageCorrupt(
                f"cannot open acceptor database {self.path}: {_reason(exc)}"
            ) from exc

    def load_all(self) -> dict[int, AcceptorState]:
        return self._load(select(acceptor_state))

    def load_newest(self, limit: int) -> tuple[dict[int, AcceptorState], int]:
        """The newest ``limit`` instances' states, and the highest instance left
        on disk only (0 when every instance was loaded)."""
        query = select(acceptor_state).order_by(acceptor_state.c.instance.desc()).limit(limit)
        states = self._load(query)
        if len(states) < limit:
            return states, 0
        return states, min(states) - 1

    def load_states(
        self, first: int, last: int, *, accepted_only: bool = False, limit: int | None = None
    ) -> dict[int, AcceptorState]:
        """The saved states of the instances from ``first`` through ``last``
        (only those with an accepted value, the first ``limit`` of them)."""
        t = acceptor_state.c
        query = select(acceptor_state).where(t.instance >= first, t.instance <= last)
        if accepted_only:
            query = query.where(t.accepted_value.is_not(None))
        if limit is not None:
            query = query.order_by(t.instance).limit(limit)
        return self._load(query)

    def summarize_through(self, last: int) -> tuple[Ballot, int]:
        """Over the instances through ``last``: the highest promised ballot
        (any instance's) and the highest instance, of either space, with an
        accepted value (0: none)."""
        t = acceptor_state.c
        conn = self._connection()
        try:
            with conn.begin():
                promised = conn.execute(
                    select(t.promised_round, t.promised_proposer_id)
                    .where(t.instance <= last)
                    .order_by(t.promised_round.desc(), t.promised_proposer_id.desc())
                    .limit(1)
                ).first()
                # Key -k is single-decree instance k (servers/acceptor.py): M
                # counts both spaces.
                accepted = conn.execute(
                    select(func.max(func.abs(t.instance))).where(
                        t.instance <= last, t.accepted_value.is_not(None)
                    )
                ).scalar()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageError(f"cannot read {self.path}: {_reason(exc)}") from exc
        ballot = ZERO_BALLOT if promised is None else Ballot(promised[0], promised[1])
        return ballot, int(accepted or 0)

    def _load(self, query: Any) -> dict[int, AcceptorState]:
        conn = self._connection()
        states: dict[int, AcceptorState] = {}
        try:
            with conn.begin():
                rows = conn.execute(query).all()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageCorrupt(f"cannot read {self.path}: {_reason(exc)}") from exc
        for row in rows:
            try:
                accepted = Ballot(row.accepted_round, row.accepted_proposer_id)
                states[row.instance] = AcceptorState(
                    promised_ballot=Ballot(row.promised_round, row.promised_proposer_id),
                    accepted_ballot=accepted,
                    accepted_value=row.accepted_value,
                )
            except (ValueError, TypeError) as exc:
                raise StorageCorrupt(
                    f"{self.path}: instance {row.instance} holds an impossible state: {exc}"
                ) from exc
        return states

    def load_range_promise(self) -> RangePromise:
        conn = self._connection()
        try:
            with conn.begin():
                row = conn.execute(select(range_promise_table)).first()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageCorrupt(f"cannot read {self.path}: {_reason(exc)}") from exc
        if row is None:
            return RangePromise()
        try:
            ballot = Ballot(row.promised_round, row.promised_proposer_id)
        except ValueError as exc:
            raise StorageCorrupt(f"{self.path}: impossible range promise: {exc}") from exc
        return RangePromise(row.from_instance, ballot)

    def save(
        self,
        writes: Sequence[tuple[int, AcceptorState]],
        range_promise: RangePromise | None = None,
        chosen_through: int | None = None,
        compacted_through: int | None = None,
    ) -> None:
        if (
            not writes
            and range_promise is None
            and chosen_through is None
            and compacted_through is None
        ):
            return
        conn = self._connection()
        try:
            with conn.begin():
                if writes:
                    conn.execute(_UPSERT_STATES, _state_rows(writes))
                if range_promise is not None:
                    conn.execute(_UPSERT_RANGE_PROMISE, [_range_row(range_promise)])
                if chosen_through is not None:
                    row = {"key": "chosen_through", "value": str(chosen_through)}
                    conn.execute(_UPSERT_META, [row])
                if compacted_through is not None:
                    row = {"key": "compacted_through", "value": str(compacted_through)}
                    conn.execute(_UPSERT_META, [row])
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot commit to {self.path}: {_reason(exc)}") from exc
        if compacted_through is not None:
            self.compacted_through = max(self.compacted_through, compacted_through)

    def truncate(self, through: int, limit: int) -> int:
        """Delete the votes of up to ``limit`` log instances <= ``through``
        (the lowest first; single-decree keys, below 1, are never touched) and
        return how many went. Only ever called with a ``compacted_through``
        that is already durable, so a crash in the middle forgets nothing
        that is still needed."""
        t = acceptor_state.c
        lowest = (
            select(t.instance)
            .where(t.instance >= 1, t.instance <= through)
            .order_by(t.instance)
            .limit(limit)
            .scalar_subquery()
        )
        conn = self._connection()
        try:
            with conn.begin():
                result = conn.execute(delete(acceptor_state).where(t.instance.in_(lowest)))
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot truncate {self.path}: {_reason(exc)}") from exc
        return int(result.rowcount)

    def reclaim(self) -> int:
        """Return free pages to the file system (a bounded number); how many
        are still free."""
        try:
            return reclaim_space(self._connection())
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot reclaim space in {self.path}: {_reason(exc)}") from exc

    def disk_bytes(self) -> int:
        return disk_bytes(self.path)

    def close(self) -> None:
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError, sqlite3.Error):
                self._conn.close()
            self._conn = None
        self._engine.dispose()

    # Internals ----------------------------------------------------------

    def _connection(self) -> Connection:
        if self._conn is None:
            raise StorageError("storage is not open")
        return self._conn

    def _check_pragmas(self) -> None:
        conn = self._connection()
        with conn.begin():
            mode = conn.exec_driver_sql("PRAGMA journal_mode").scalar()
            sync = conn.exec_driver_sql("PRAGMA synchronous").scalar()
        if str(mode).lower() != "wal" or sync not in (2, 3):
            raise StorageCorrupt(
                f"{self.path}: need journal_mode=WAL and synchronous=FULL, got {mode}/{sync}"
            )

    def _check_integrity(self) -> None:
        conn = self._connection()
        with conn.begin():
            result = conn.exec_driver_sql("PRAGMA quick_check").scalars().all()
            tables = set(
                conn.exec_driver_sql("SELECT name FROM sqlite_master WHERE type='table'").scalars()
            )
        if result != ["ok"]:
            raise StorageCorrupt(f"{self.path} failed SQLite's integrity check: {result[:3]}")
        if not {"acceptor_state", "meta"} <= tables:
            raise StorageCorrupt(
                f"{self.path} is an SQLite file but not an acceptor database (tables: "
                f"{sorted(tables) or 'none'})"
            )

    def _check_identity(self) -> None:
        conn = self._connection()
        with conn.begin():
            stored = {key: value for key, value in conn.execute(select(meta.c.key, meta.c.value))}
        if stored.get("schema_version") != SCHEMA_VERSION:
            raise StorageCorrupt(
                f"{self.path}: schema version {stored.get('schema_version')!r}, "
                f"this build reads {SCHEMA_VERSION!r}"
            )
        if stored.get("acceptor_id") != str(self.acceptor_id):
            raise StorageCorrupt(
                f"{self.path} belongs to acceptor {stored.get('acceptor_id')}, not to acceptor "
                f"{self.acceptor_id}: check --id and --db"
            )
        if stored.get("cluster_id") != self.cluster_id:
            raise StorageCorrupt(
                f"{self.path} belongs to cluster {stored.get('cluster_id')!r}, not "
                f"{self.cluster_id!r}: check --cluster-id and --db"
            )
        self.incarnation = stored.get("incarnation", "")
        try:
            self.status = AcceptorStatus(stored.get("status", AcceptorStatus.VOTING.value))
            self.no_vote_through = int(stored.get("no_vote_through", "0"))
            self.chosen_through = int(stored.get("chosen_through", "0"))
            self.compacted_through = int(stored.get("compacted_through", "0"))
        except ValueError as exc:
            raise StorageCorrupt(f"{self.path}: impossible identity record: {exc}") from exc
        if (
            self.no_vote_through < 0
            or self.chosen_through < 0
            or self.compacted_through < 0
            or not self.incarnation
        ):
            raise StorageCorrupt(f"{self.path}: impossible identity record: {stored}")

    def _initialise(self) -> None:
        conn = self._connection()
        self.incarnation = new_incarnation()
        self.status = AcceptorStatus.JOINING
        with conn.begin():
            metadata.create_all(conn)
            conn.execute(
                meta.insert(),
                [
                    {"key": "schema_version", "value": SCHEMA_VERSION},
                    {"key": "acceptor_id", "value": str(self.acceptor_id)},
                    {"key": "cluster_id", "value": self.cluster_id},
                    {"key": "incarnation", "value": self.incarnation},
                    {"key": "status", "value": self.status.value},
                ],
            )
        self.created = True

    # Identity ------------------------------------------------------------

    def load_members(self) -> dict[int, str]:
        conn = self._connection()
        try:
            with conn.begin():
                rows = conn.execute(select(members.c.acceptor_id, members.c.incarnation)).all()
        except (SQLAlchemyError, sqlite3.Error) as exc:
            raise StorageCorrupt(f"cannot read {self.path}: {_reason(exc)}") from exc
        return {row.acceptor_id: row.incarnation for row in rows}

    def record_member(self, acceptor_id: int, incarnation: str, *, replace: bool = False) -> str:
        """Record ``incarnation`` for peer ``acceptor_id`` unless one is known
        (or always, with ``replace``), durably. Returns the one known before
        ("" if none)."""
        conn = self._connection()
        try:
            with conn.begin():
                known = conn.execute(
                    select(members.c.incarnation).where(members.c.acceptor_id == acceptor_id)
                ).scalar()
                if known is None:
                    conn.execute(
                        members.insert(), [{"acceptor_id": acceptor_id, "incarnation": incarnation}]
                    )
                elif replace and known != incarnation:
                    conn.execute(
                        members.update()
                        .where(members.c.acceptor_id == acceptor_id)
                        .values(incarnation=incarnation)
                    )
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot commit to {self.path}: {_reason(exc)}") from exc
        return str(known or "")

    def set_status(self, status: AcceptorStatus, *, expect_incarnation: str | None = None) -> bool:
        """Store ``status``. With ``expect_incarnation``, only if the file still
        holds that incarnation (``paxos acceptor recover`` may have rewritten it
        under a running server); returns whether it was stored."""
        conn = self._connection()
        try:
            with conn.begin():
                if expect_incarnation is not None:
                    stored = conn.execute(
                        select(meta.c.value).where(meta.c.key == "incarnation")
                    ).scalar()
                    if stored != expect_incarnation:
                        return False
                conn.execute(_UPSERT_META, [{"key": "status", "value": status.value}])
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot commit to {self.path}: {_reason(exc)}") from exc
        self.status = status
        return True

    def apply_recovery(self, incarnation: str, plan: RecoveryPlan, peers: dict[int, str]) -> None:
        """Replace everything with a rebuilt acceptor, in one transaction: no
        instance state, the plan's range promise and no-vote-through instance,
        the new ``incarnation`` with status RECOVERING, and ``peers`` (id ->
        incarnation) as the known members."""
        conn = self._connection()
        promise = plan.range_promise
        try:
            with conn.begin():
                conn.execute(acceptor_state.delete())
                conn.execute(range_promise_table.delete())
                if not promise.ballot.is_zero:
                    conn.execute(range_promise_table.insert(), [_range_row(promise)])
                conn.execute(
                    _UPSERT_META,
                    [
                        {"key": "incarnation", "value": incarnation},
                        {"key": "status", "value": AcceptorStatus.RECOVERING.value},
                        {"key": "no_vote_through", "value": str(plan.no_vote_through)},
                    ],
                )
                conn.execute(members.delete())
                if peers:
                    conn.execute(
                        members.insert(),
                        [
                            {"acceptor_id": i, "incarnation": inc}
                            for i, inc in sorted(peers.items())
                        ],
                    )
        except (SQLAlchemyError, sqlite3.Error, OSError) as exc:
            raise StorageError(f"cannot commit to {self.path}: {_reason(exc)}") from exc
        self.incarnation = incarnation
        self.status = AcceptorStatus.RECOVERING
        self.no_vote_through = plan.no_vote_through


def new_incarnation() -> str:
    """A fresh incarnation: random, so two files never share one."""
    return uuid.uuid4().hex


def _upsert(table: Table, key: str) -> Any:
    """INSERT ... ON CONFLICT(key) DO UPDATE of every other column; built once,
    not per commit (the profile showed statement building on the hot path)."""
    stmt = insert(table)
    return stmt.on_conflict_do_update(
        index_elements=[table.c[key]],
        set_={c.name: stmt.excluded[c.name] for c in table.c if c.name != key},
    )


_UPSERT_STATES = _upsert(acceptor_state, "instance")
_UPSERT_RANGE_PROMISE = _upsert(range_promise_table, "id")
_UPSERT_META = _upsert(meta, "key")


def _state_rows(writes: Sequence[tuple[int, AcceptorState]]) -> list[dict[str, Any]]:
    return [
        {
            "instance": instance,
            "promised_round": s.promised_ballot.round,
            "promised_proposer_id": s.promised_ballot.proposer_id,
            "accepted_round": s.accepted_ballot.round,
            "accepted_proposer_id": s.accepted_ballot.proposer_id,
            "accepted_value": s.accepted_value,
        }
        for instance, s in writes
    ]


def _range_row(promise: RangePromise) -> dict[str, Any]:
    return {
        "id": 1,
        "from_instance": promise.from_instance,
        "promised_round": promise.ballot.round,
        "promised_proposer_id": promise.ballot.proposer_id,
    }
