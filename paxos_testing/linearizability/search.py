"""How a history is searched: key by key (:mod:`.checker`), and each key's
sub-history by :func:`check_key`.

* Keys are independent (the locality of linearizability, Herlihy and Wing;
  P-compositionality, Horn and Kroening 2015), so each key's sub-history is checked on its own
  and the first failing key is reported: first any key with a read of a
  value that no operation could have written by then (a linear scan that
  needs no search), then the first key, in sorted order, that the search
  rejects.
* Per key, the search is Wing and Gong's (1993) depth-first search over
  "which operation takes effect next", with Lowe's (2017) memoisation: a
  configuration is the set of operations placed so far plus the model
  state, and reaching a configuration already searched (which therefore
  failed) prunes the branch. As in Porcupine's ``checkSingle``, the
  known-outcome operations form a doubly linked list of call and return
  entries sorted by time. The candidates to go next are the calls before
  the first return entry, placing one unlinks its two entries (restored on
  backtrack), and so a step costs O(concurrency). The search is a loop
  over an explicit stack, never recursion.
* An operation of unknown outcome has no return entry, so nothing forces
  it; the history is accepted once every known-outcome operation is placed.
  Each configuration tries the known-outcome candidates first and only
  then the unknown ones, under four rules. Each rule holds because any
  linearization can be rewritten into one that obeys it, by dropping an
  unknown operation (it may never have taken effect) or moving it later
  (it may take effect at any time after its invoke), so the check stays
  exact:

  1. Interchangeable: once invoked, unknown operations with the same call
     (kind, value, expected) are interchangeable, so they form one class
     and the memo records how many of each class were used. A
     configuration that used at least as many of every class as one that
     already failed, with the same known operations placed and the same
     state, is pruned.
  2. Observed: an unknown write is applied only if it changes the state
     and the very next operation observes the new state: a get that
     returns it, a cas that compares equal to it (possibly a chain of
     unknown cas operations ending in one of these), or a cas that did not
     swap but would have swapped on the state before the write.
  3. Unread values: written values that no get returns and no cas expects
     cannot be told apart by the model, so the search treats them as one.
  4. Spare writes: when any change of state will do (to let a pending cas
     fail), one write of a value that nothing left to place can observe is
     as good as another, so only one of them is tried.

  Checking histories with unknown outcomes is NP-complete in general
  (Gibbons and Korach, 1997, for registers). The search stays fast when
  every write writes a value nothing else writes, because then each read
  names the write it saw; with a few values reused by many writes of
  unknown outcome, proving a history non-linearizable can exhaust the
  budget. Give chaos histories unique values.
"""

from __future__ import annotations

import time
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Final, TypeAlias

from paxos_testing.linearizability.history import Operation
from paxos_testing.linearizability.subhistory import Operations, State, Timeline
from paxos_testing.linearizability.unknowns import UnknownClasses

# How many search steps run between two looks at the clock.
_CLOCK_EVERY: Final = 1024


@dataclass(frozen=True)
class Failure:
    """Where the deepest branch of a failed search got stuck."""

    prefix: list[int]  # positions (in the key's sub-history) in linearization order
    stuck: int  # the operation whose reply arrived before it could be placed
    candidates: list[int]  # known-outcome operations invoked by then and not placed


class SearchTimeout(Exception):
    pass


def check_key(history: Sequence[tuple[int, Operation]], deadline: float) -> Failure | None:
    """Search one key's sub-history; None means linearizable.

    Raises :class:`SearchTimeout` once ``deadline`` (a ``time.monotonic`` value)
    has passed.
    """
    if time.monotonic() >= deadline:
        raise SearchTimeout
    return _Search(history).run(deadline)


class _Memo:
    """The configurations already searched, all of which failed.

    For each (known operations placed, state): the unknown class members used
    (as bits) in each such configuration; first those with ``fresh`` False,
    then those with ``fresh`` True. Using fewer of every class is "subset"
    (rule 1 in the module docstring).
    """

    __slots__ = ("_failed",)

    def __init__(self) -> None:
        self._failed: dict[tuple[int, State], tuple[list[int], list[int]]] = {}

    def novel(self, known: int, state: State, unknown: int, fresh: bool) -> bool:
        """Record the configuration; False if one that dominates it failed."""
        seen = self._failed.get((known, state))
        if seen is None:
            self._failed[(known, state)] = ([], [unknown]) if fresh else ([unknown], [])
            return True
        unused = ~unknown
        for used in seen[0]:
            if not used & unused:
                return False
        if fresh:
            for used in seen[1]:
                if not used & unused:
                    return False
        seen[1 if fresh else 0].append(unknown)
        return True


#: How to undo placing an operation: its unknown class (-1 for a known
#: operation), and the state, fresh flag, candidates, next candidate and
#: frontier of the configuration before it.
_Frame: TypeAlias = tuple[int, State, bool, list[int], int, int]


class _Search:
    """The depth-first search over one key's sub-history (see the module docstring).

    Each configuration is searched in two passes: first the known operations
    linked before the first return entry (``frontier``), then the unknown
    classes worth applying there. A loop over an explicit stack of frames,
    never recursion.
    """

    __slots__ = (
        "best",
        "candidates",
        "entry",
        "frames",
        "fresh",
        "frontier",
        "known_mask",
        "line",
        "memo",
        "next_candidate",
        "no_candidates",
        "ops",
        "placed",
        "remaining_known",
        "state",
        "unknown_mask",
        "unknown_pass",
        "unknowns",
    )

    def __init__(self, history: Sequence[tuple[int, Operation]]) -> None:
        self.ops = Operations(history)
        self.line = Timeline(history, self.ops.known)
        self.unknowns = UnknownClasses(self.ops, self.line)
        self.memo = _Memo()
        self.remaining_known = sum(self.ops.known)
        self.state: State = None  # every key starts absent
        # True right after an unknown write: the next operation must observe the
        # state, or that write was pointless (rule 2 in the module docstring).
        self.fresh = False
        self.known_mask = 0
        self.unknown_mask = 0
        self.placed: list[int] = []  # the operations placed, in order
        self.frames: list[_Frame] = []  # one per operation placed
        self.best: Failure | None = None
        self.entry = self.line.nxt[0]
        self.unknown_pass = False
        self.frontier = 0
        self.no_candidates: list[int] = []
        self.candidates = self.no_candidates
        self.next_candidate = 0

    def run(self, deadline: float) -> Failure | None:
        """None once every known operation is placed, or the deepest dead end
        once every branch failed; one step places, skips or undoes one operation."""
        steps = 0
        while self.remaining_known:
            steps += 1
            if steps % _CLOCK_EVERY == 0 and time.monotonic() >= deadline:
                raise SearchTimeout
            if not self.unknown_pass:
                self._known_step()
            elif self.next_candidate < len(self.candidates):
                self._unknown_step()
            elif not self._backtrack():
                return self.best
        return None

    def _known_step(self) -> None:
        """Place the known operation whose call is at ``entry`` if it fits, else
        move on; at the first return entry, start the unknown pass there."""
        line, entry = self.line, self.entry
        if not line.is_call[entry]:
            self.frontier = entry
            self.candidates = (
                self.unknowns.candidates(self.state, self.fresh, entry, self.known_mask)
                if self.unknowns.members
                else []
            )
            self.next_candidate = 0
            self.unknown_pass = True
            return
        i = line.entry_op[entry]
        ok, new_state = self.ops.apply_known(i, self.state, self.fresh)
        bit = self.ops.bit[i]
        if not (ok and self.memo.novel(self.known_mask | bit, new_state, self.unknown_mask, False)):
            self.entry = line.nxt[entry]
            return
        self.placed.append(i)
        self.frames.append((-1, self.state, self.fresh, self.no_candidates, 0, 0))
        self.state = new_state
        self.fresh = False
        self.known_mask |= bit
        self.remaining_known -= 1
        line.unlink(entry)
        self.entry = line.nxt[0]

    def _unknown_step(self) -> None:
        """Apply the next candidate unknown class, unless a dominating
        configuration already failed."""
        unknowns = self.unknowns
        c = self.candidates[self.next_candidate]
        self.next_candidate += 1
        member = unknowns.used[c]
        new_unknown = self.unknown_mask | unknowns.bits[c][member]
        if not self.memo.novel(self.known_mask, unknowns.value[c], new_unknown, True):
            return
        self.placed.append(unknowns.members[c][member])
        self.frames.append(
            (c, self.state, self.fresh, self.candidates, self.next_candidate, self.frontier)
        )
        self.state = unknowns.value[c]
        self.fresh = True
        self.unknown_mask = new_unknown
        unknowns.used[c] += 1
        self.entry = self.line.nxt[0]
        self.unknown_pass = False

    def _backtrack(self) -> bool:
        """Both passes are done and the operation of the return entry at
        ``frontier`` cannot be placed before it returned: a dead end. Note it
        if it is the deepest yet, and undo the last placement; False when there
        is none (the key is not linearizable)."""
        if self.best is None or len(self.placed) > len(self.best.prefix):
            self.best = Failure(
                prefix=list(self.placed),
                stuck=self.line.entry_op[self.frontier],
                candidates=self.line.pending_calls(self.frontier),
            )
        if not self.placed:
            return False
        i = self.placed.pop()
        c, self.state, self.fresh, self.candidates, self.next_candidate, self.frontier = (
            self.frames.pop()
        )
        if c >= 0:
            self.unknowns.used[c] -= 1
            self.unknown_mask ^= self.unknowns.bits[c][self.unknowns.used[c]]
            return True  # resume the unknown pass where it was
        self.known_mask ^= self.ops.bit[i]
        self.remaining_known += 1
        call = self.line.call_entry[i]
        self.line.relink(call)
        self.entry = self.line.nxt[call]
        self.unknown_pass = False
        return True
