"""Finding room for a cluster's ports on 127.0.0.1."""

from __future__ import annotations

import random
import socket

#: Below Linux's default ephemeral range (32768-60999), so the kernel's own
#: choice of client ports cannot take one between our check and the bind.
_LOW, _HIGH = 20000, 32000


def _free(port: int, host: str) -> bool:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        try:
            sock.bind((host, port))
        except OSError:
            return False
    return True


def free_port_block(count: int, host: str = "127.0.0.1", rng: random.Random | None = None) -> int:
    """The first of ``count`` consecutive ports that are free right now.

    A check, not a reservation: a server that then fails to bind says so, and
    the benchmark stops with its log."""
    rng = rng or random.Random()
    for _ in range(200):
        base = rng.randrange(_LOW, _HIGH - count)
        if all(_free(base + i, host) for i in range(count)):
            return base
    raise RuntimeError(f"found no {count} consecutive free ports in {_LOW}..{_HIGH}")
