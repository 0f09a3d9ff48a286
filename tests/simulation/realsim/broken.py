"""Deliberately broken acceptors, for proving that the simulation can fail.

Each mode puts back one bug that was fixed in the real acceptor, by patching
:class:`~paxos_service.servers.acceptor.AcceptorServicer` or its
:class:`~paxos_service.servers.acceptor_states.StateWindow` in this process
only. They live in the test package: nothing in the product can turn them on.

* ``unatomic-range-read`` (race 1): no step lock, so an eviction can run
  while a PrepareRange or GetAcceptedRange waits for its disk read; the
  instances it moves from memory to disk are then in neither half of the
  reply, and a new leader fills them with no-ops.
* ``stale-floor`` (race 2): an Accept or Prepare reads the range-promise floor
  before its step starts (before it waits for the step lock and the disk read
  of an evicted instance), and decides with it after a PrepareRange promised
  a higher ballot meanwhile.
"""

from __future__ import annotations

import contextlib
from collections.abc import AsyncIterator, Iterator
from typing import Any

from paxos_service.servers.acceptor import AcceptorServicer
from paxos_service.servers.acceptor_states import StateWindow

MODES = ("unatomic-range-read", "stale-floor")


@contextlib.asynccontextmanager
async def _no_lock(self: StateWindow) -> AsyncIterator[None]:
    yield


def _unlocked_saved(self: StateWindow, instance: int, future: Any) -> None:
    if future.cancelled() or future.exception() is not None:
        return
    left = self._unsaved.get(instance, 0) - 1
    if left > 0:
        self._unsaved[instance] = left
    else:
        self._unsaved.pop(instance, None)
    if len(self.states) > self._max_resident:
        self._evict()  # at once, even while a range read is in progress


async def _stale_floor_step(
    self: AcceptorServicer, context: Any, step_fn: Any, instance: int, log: bool
) -> Any:
    """The real step, except that the floor is read before the step starts
    (before waiting for the step lock and for the disk): the bug."""
    floor = self.range_promise.floor(instance)
    return await _REAL_STEP(
        self,
        context,
        lambda state, _floor, compacted: step_fn(state, floor, compacted),
        instance,
        log,
    )


_REAL_STEP = AcceptorServicer._step


@contextlib.contextmanager
def broken(mode: str | None) -> Iterator[None]:
    """Patch the acceptor with ``mode`` for the duration (None: as is)."""
    if mode is None:
        yield
        return
    if mode not in MODES:
        raise ValueError(f"unknown broken mode {mode!r}; expected one of {MODES}")
    patched: tuple[tuple[type, str], ...] = (
        (StateWindow, "step"),
        (StateWindow, "_saved"),
        (AcceptorServicer, "_step"),
    )
    saved = {(cls, name): getattr(cls, name) for cls, name in patched}
    if mode == "unatomic-range-read":
        StateWindow.step = _no_lock  # type: ignore[method-assign]
        StateWindow._saved = _unlocked_saved  # type: ignore[method-assign]
    else:
        AcceptorServicer._step = _stale_floor_step  # type: ignore[method-assign]
    try:
        yield
    finally:
        for (cls, name), value in saved.items():
            setattr(cls, name, value)
