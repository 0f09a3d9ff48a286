"""The error a server raises when it cannot listen where it was told to.

Its own module, below both :mod:`.server` and :mod:`.metrics_http`, because
both the gRPC port and the metrics port raise it, and ``paxos`` turns it into
one clean line instead of a traceback."""

from __future__ import annotations


class BindError(RuntimeError):
    """The listen address could not be bound (in use, or not an address here)."""
