"""The one clock node code reads: the running event loop's.

On a real loop that is ``time.monotonic``; in the deterministic simulation it
is virtual time. Node code never calls ``time.monotonic()`` or ``time.time()``
for protocol timing, so one seed replays a run exactly.
"""

from __future__ import annotations

import asyncio


def now() -> float:
    """Seconds on the running loop's monotonic clock."""
    return asyncio.get_running_loop().time()
