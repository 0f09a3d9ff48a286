"""The benchmark's own failure, raised wherever something it started does not
behave; ``paxos bench`` reports it in one line and exits 1."""

from __future__ import annotations


class BenchError(RuntimeError):
    """The benchmark cannot go on; the message says what failed."""
