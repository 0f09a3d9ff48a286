"""Linearizability checking for key-value histories.

A history is what concurrent clients saw: for every operation, when it was
invoked, when (or whether) its reply came, and what the reply said. The
history is linearizable if every operation can be given a single point in
time, somewhere between its invoke and its reply, such that applying the
operations one at a time in the order of those points, to one sequential
key-value map, produces exactly the replies the clients saw (Herlihy and
Wing, "Linearizability: A Correctness Condition for Concurrent Objects",
1990).

The rules, in one place:

* The sequential model of one key. The state is ``bytes`` or ``None``
  (absent); every key starts absent.

  ========  ===========================  =================================
  kind      effect on the state          reply the model allows
  ========  ===========================  =================================
  put       state = value                ``None``
  get       unchanged                    exactly the state
  delete    state = None                 ``None``
  cas       if state == expected:        ``True`` when it swapped,
            state = value, else          ``False`` when it did not
            unchanged                    (``expected=None``: key absent)
  ========  ===========================  =================================

* ``status="ok"``: the reply came at ``complete``. The operation took effect
  exactly once, somewhere in ``[invoke, complete]``.
* ``status="fail"``: the operation definitely did not take effect (the
  server refused it before doing anything). The checker drops it.
* ``status="unknown"``: the client gave up (timeout, crash, partition). The
  operation may have taken effect at any time after ``invoke``, even long
  after the client stopped waiting, or never. Its reply is unknown, so any
  reply is accepted; ``complete`` is ignored and treated as +infinity. An
  unknown ``get`` has no effect and is dropped.
* Time: an operation A precedes B in real time iff ``A.complete <
  B.invoke``. Intervals that merely touch (``A.complete == B.invoke``) count
  as concurrent, so a clock that cannot tell two instants apart never makes
  a history look worse than it is. Times may be on any monotonic scale, but
  all clients must share it.

Modules: :mod:`.history` (:class:`Operation`, what a client saw),
:mod:`.checker` (:func:`check_history`, the verdict), :mod:`.search` (how one
key is searched, and why that search is exact), :mod:`.explain` (what a
failure says), :mod:`.jsonl` (the file format) and :mod:`.cli`.

Run ``python -m paxos_testing.linearizability HISTORY.jsonl`` to check a
saved history: exit status 0 means linearizable, 1 not linearizable, 2
unknown (the search budget ran out, or the file could not be read).
"""

from paxos_testing.linearizability.checker import (
    DEFAULT_TIMEOUT_SECONDS,
    CheckResult,
    check_history,
)
from paxos_testing.linearizability.cli import main
from paxos_testing.linearizability.history import HistoryError, Kind, Operation, Status
from paxos_testing.linearizability.jsonl import history_from_jsonl, history_to_jsonl

__all__ = [
    "DEFAULT_TIMEOUT_SECONDS",
    "CheckResult",
    "HistoryError",
    "Kind",
    "Operation",
    "Status",
    "check_history",
    "history_from_jsonl",
    "history_to_jsonl",
    "main",
]
