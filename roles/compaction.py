"""The compaction point T: how far down the acceptors may forget the log.

Rule. Each learner reports its *snapshot index*: every instance <= it is in
a snapshot the learner holds durably (written, fsynced, checksummed). The
leader takes the highest index that a majority of the learners have reached,
that is, the lowest index among the majority with the highest indexes, and
never more than the instances it knows are chosen::

    T = min(chosen_through, k-th highest snapshot index), k = majority(learners)

With fewer than k reports, T is 0. T only grows (:func:`advance`). The leader
sends T with every Accept (``Accept.compact_through``); each acceptor keeps the
highest T it heard, deletes its votes for log instances <= T and refuses to
vote there again (:class:`roles.errors.Compacted`).

Why this is safe (no instance loses its chosen value, none gets a second):

1. *Nothing below T can be chosen anew.* Every instance <= T is already
   chosen (T <= chosen_through, and a snapshot only ever holds applied, so
   chosen, instances). An acceptor refuses Prepare and Accept there
   (``Compacted``), and a leader proposes nothing at or below its
   ``chosen_through``; a new leader's phase 1 starts above the highest
   ``chosen_through`` an acceptor of its majority reports, and an acceptor
   that heard T heard, in the same Accept, a ``chosen_through`` >= T. So no
   phase 2 ever runs below T, and no vote below T is ever needed again.
2. *No chosen value is lost.* The values <= T survive in the snapshots of a
   majority of learners, taken before any acceptor heard T: a leader
   learns a learner's index only from the learner's own answer, given after
   the snapshot was durable. A learner that is new, wiped or behind T
   installs a snapshot from one of them (verified by its checksum) and
   catches up the rest from the acceptors, which still hold every vote
   above T. Losing a majority of learners' volumes at once is the one
   failure this does not survive, as losing a majority of acceptors'
   volumes is for the votes themselves.
3. *Single-decree instances are never compacted*: T bounds the log's
   instance space only; the acceptors keep single-decree votes for good.

Learners bound the log they need to keep: a learner snapshots once the log
applied since its last snapshot exceeds its ``--retain-log-bytes``, so the
acceptors hold about that much log above T.
"""

from __future__ import annotations

from collections.abc import Iterable

from roles.quorum import majority


def compaction_point(snapshot_indexes: Iterable[int], learners: int, chosen_through: int) -> int:
    """T for these learners' reported snapshot indexes (one per learner
    that answered; ``learners`` counts them all), capped at ``chosen_through``."""
    if learners < 1:
        return 0
    needed = majority(learners)
    highest_first = sorted((max(0, index) for index in snapshot_indexes), reverse=True)
    if len(highest_first) < needed:
        return 0
    return max(0, min(chosen_through, highest_first[needed - 1]))


def advance(current: int, proposed: int) -> int:
    """T never moves back: a lower report (a learner restarted on an older
    snapshot, a new leader that has heard fewer learners) changes nothing."""
    return max(current, proposed)
