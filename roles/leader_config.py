"""The leader's timing and limits, checked once when the configuration is made."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True, slots=True)
class LeaderConfig:
    #: The leader sends a heartbeat to every peer this often (seconds).
    heartbeat_interval: float = 0.05
    #: A follower campaigns after a random time in [T, 2T) without a valid heartbeat.
    election_timeout: float = 0.3
    #: Phase 1, or one instance's phase 2, without a quorum: re-campaign or resend.
    phase_timeout: float = 0.5
    #: At most this many instances between chosen_through and the next free one.
    window: int = 4
    #: At most this many commands in one instance's value.
    max_batch: int = 512
    #: At most this many command bytes in one instance's value (one command
    #: larger than this still goes alone: the driver bounds single commands).
    max_batch_bytes: int = 512 * 1024
    #: Resends of one instance's Accept before the leader gives up its leadership.
    max_retransmits: int = 3
    #: Commands queued at the leader beyond this are rejected (back-pressure).
    max_queued: int = 100_000
    #: Ask the acceptors before campaigning (see :mod:`roles.election`).
    pre_vote: bool = True

    def __post_init__(self) -> None:
        timings = (self.heartbeat_interval, self.election_timeout, self.phase_timeout)
        if min(timings) <= 0 or self.heartbeat_interval >= self.election_timeout:
            raise ValueError(f"invalid leader timing: {self!r}")
        limits = (self.window, self.max_batch, self.max_queued, self.max_batch_bytes)
        if min(limits) < 1 or self.max_retransmits < 0:
            raise ValueError(f"invalid leader limits: {self!r}")
