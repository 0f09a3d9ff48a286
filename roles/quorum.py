"""Majority quorums: any two majorities of the same acceptor set intersect,
which is what carries a chosen value from one ballot to the next."""

from __future__ import annotations

from collections.abc import Iterable


def majority(cluster_size: int) -> int:
    """The smallest number of acceptors that is more than half of ``cluster_size``."""
    if cluster_size < 1:
        raise ValueError("a cluster needs at least one acceptor")
    return cluster_size // 2 + 1


def is_quorum(voters: Iterable[int], acceptor_ids: frozenset[int]) -> bool:
    """True when the distinct known ``voters`` form a majority of ``acceptor_ids``."""
    return len(acceptor_ids.intersection(voters)) >= majority(len(acceptor_ids))
