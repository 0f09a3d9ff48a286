"""The schedule of a chaos run: which fault starts when, against whom.

It is a pure function of the seed, the run's length and the node names
(:func:`plan_schedule`), so a seed names a run. It alternates a fault window
and a heal window, and cycles through every kind in a seeded order before
repeating one, so even a short run sees several kinds. Which proposer leads is
only known when a fault starts, so "the leader" is a target resolved then
(:class:`FaultRecord` says who it was). What each kind does is in
:mod:`paxos_testing.chaos.nemesis`, which injects them.
"""

from __future__ import annotations

import random
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any, Final

FAULT_KINDS: Final = (
    "partition-leader",
    "partition-majority",
    "partition-one-way",
    "partition-flap",
    "loss",
    "kill",
    "kill-leader",
    "pause",
    "pause-leader",
    "fsync",
    "disk-full",
    # Kinds added later go at the end: the order seeds the schedule's shuffle,
    # so `--kinds <the old list>` still replays an older run exactly.
    "slow-link",
    "clock-jump",
    "split-brain",
    "learner-wipe",
)
#: Kinds that need every proposer started under libfaketime.
CLOCK_KINDS: Final = ("clock-jump",)
#: Faults whose target is chosen when the fault starts.
LEADER = "leader"
#: Availability targets (seconds of no successful write), by what was hit.
GAP_TARGET_LEADER: Final = 2.0
GAP_TARGET_SINGLE_NODE: Final = 1.0
#: A disk-full window (it ends early once the acceptor stops voting).
DISK_FULL_SECONDS: Final = (20.0, 25.0)


@dataclass(frozen=True)
class PlannedFault:
    """One fault window of the schedule; times are seconds from the run's start."""

    index: int
    kind: str
    start: float
    duration: float
    #: The heal window that follows the fault.
    heal_duration: float
    #: A node name, or LEADER.
    target: str
    #: The other side of a partition (node names), the loss probability, ...
    params: dict[str, Any] = field(default_factory=dict)

    @property
    def end(self) -> float:
        return self.start + self.duration


def plan_schedule(
    seed: int,
    duration: float,
    nodes: Sequence[str],
    *,
    warmup: float = 3.0,
    fault_seconds: tuple[float, float] = (3.0, 5.0),
    heal_seconds: tuple[float, float] = (3.0, 5.0),
    kinds: Sequence[str] = FAULT_KINDS,
) -> list[PlannedFault]:
    """The faults of a run, as a pure function of its arguments.

    ``nodes`` are names like ``acceptor-0``. A fault is planned only if it
    and its heal window end within ``duration``."""
    rng = random.Random(seed)
    acceptors = sorted(n for n in nodes if n.startswith("acceptor-"))
    proposers = sorted(n for n in nodes if n.startswith("proposer-"))
    learners = sorted(n for n in nodes if n.startswith("learner-"))
    everyone = sorted(nodes)
    faults: list[PlannedFault] = []
    order: list[str] = []
    misses = 0
    t = warmup
    while True:
        if not order:
            order = list(kinds)
            rng.shuffle(order)
        kind = order.pop()
        length = rng.uniform(*fault_seconds)
        heal = rng.uniform(*heal_seconds)
        params: dict[str, Any] = {}
        target: str
        if kind in ("partition-leader", "kill-leader", "pause-leader"):
            target = LEADER
        elif kind == "partition-majority":
            minority = [rng.choice(acceptors)]
            minority += [p for p in proposers if rng.random() < 0.34]
            minority += [x for x in learners if rng.random() < 0.34]
            target = minority[0]
            params["minority"] = sorted(minority)
        elif kind == "clock-jump":
            # The leader, or a follower: whose election timer then fires early.
            target = LEADER if rng.random() < 0.5 else rng.choice(proposers)
            params["jump_seconds"] = round(rng.uniform(2.0, 120.0), 1)
        elif kind == "slow-link":
            target = LEADER if rng.random() < 0.5 else rng.choice(everyone)
            params["rate_kbit"] = rng.choice((64, 128, 256, 512))
        elif kind == "split-brain":
            # The learner that stays on the old leader's side.
            target = LEADER
            params["learner"] = rng.choice(learners)
        elif kind in ("partition-one-way", "partition-flap"):
            target = LEADER if rng.random() < 0.5 else rng.choice(everyone)
        elif kind == "loss":
            target = "all"
            params["probability"] = round(rng.uniform(0.05, 0.3), 2)
        elif kind in ("kill", "pause", "learner-wipe"):
            target = rng.choice(learners if kind == "learner-wipe" else everyone)
        elif kind in ("fsync", "disk-full"):
            target = rng.choice(acceptors)
            if kind == "disk-full":
                # SQLite reuses the space of its WAL file, so a full disk
                # bites only once the WAL must grow (after a few MiB of
                # commits): give it time. The window ends early, soon after
                # the acceptor has stopped voting.
                length = rng.uniform(*DISK_FULL_SECONDS)
        else:
            raise ValueError(f"unknown fault kind {kind!r}")
        if t + length + heal > duration:
            # Too long for what is left of the run: try the other kinds.
            misses += 1
            if misses > len(kinds):
                return faults
            continue
        misses = 0
        faults.append(PlannedFault(len(faults), kind, t, length, heal, target, params))
        t += length + heal


@dataclass
class FaultRecord:
    """What really happened for one planned fault (monotonic seconds from t0)."""

    planned: PlannedFault
    started: float | None = None
    healed: float | None = None
    #: The node(s) hit, resolved at start.
    targets: list[str] = field(default_factory=list)
    #: Whether the main target was the leader when the fault started.
    hit_leader: bool = False
    notes: list[str] = field(default_factory=list)
    #: Storage faults: health seen NOT_SERVING while the fault was on.
    saw_not_serving: bool = False
    #: Storage faults: (start number) of the incarnation that was hit.
    incarnation: int | None = None
    #: Flapping partitions: how often the rules were toggled.
    flips: int = 0

    @property
    def kind(self) -> str:
        return self.planned.kind

    @property
    def gap_target(self) -> float | None:
        """The availability target for this fault, if it has one."""
        kind = self.kind
        if kind in ("partition-majority", "loss", "partition-one-way", "partition-flap"):
            return None
        if kind == "split-brain":
            return None
        if kind in ("slow-link", "clock-jump"):
            return None
        return GAP_TARGET_LEADER if self.hit_leader else GAP_TARGET_SINGLE_NODE

    def as_dict(self) -> dict[str, Any]:
        return {
            "index": self.planned.index,
            "kind": self.kind,
            "planned_start": round(self.planned.start, 3),
            "planned_duration": round(self.planned.duration, 3),
            "started": _round(self.started),
            "healed": _round(self.healed),
            "targets": self.targets,
            "hit_leader": self.hit_leader,
            "params": self.planned.params,
            "notes": self.notes,
            "saw_not_serving": self.saw_not_serving,
            "flips": self.flips,
        }


def _round(x: float | None) -> float | None:
    return None if x is None else round(x, 3)
