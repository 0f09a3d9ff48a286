"""How log entries are encoded as Paxos values.

A log entry is ``MAGIC + LogEntry`` (protobuf). Single-decree ``Propose``
values live in their own instance space (``InstanceSpace`` in the proto), so
they never reach the log, whatever bytes they hold. A learner still never
trusts a value to be well formed (an opaque value: a no-op, skipped the same
way by every replica), and :func:`decode` gives every replica
the same reading of an odd one: an entry with ``noop`` set is a no-op, whatever
else it carries (commands in a no-op entry are ignored, never applied), and a
value with the prefix that does not parse is an opaque entry (a no-op too).
"""

from __future__ import annotations

from collections.abc import Sequence

from google.protobuf.message import DecodeError

from paxos_service.v1 import paxos_pb2 as pb

MAGIC = b"PXL1"
#: The value a new leader proposes to fill a hole in the log.
NOOP = MAGIC + pb.LogEntry(noop=True).SerializeToString()

# LogEntry.commands is field 1, length-delimited: tag byte 0x0a.
_COMMANDS_TAG = b"\x0a"


#: Bytes a log entry adds around each command (tag and length) and once (magic).
PER_COMMAND_OVERHEAD = 11
ENTRY_OVERHEAD = len(MAGIC)


def max_command_bytes(max_value_bytes: int) -> int:
    """The largest serialized command that still fits one Paxos value alone."""
    return max_value_bytes - ENTRY_OVERHEAD - PER_COMMAND_OVERHEAD


def encode_batch(commands: Sequence[bytes]) -> bytes:
    """Pack serialized ``Command`` messages into one log entry without parsing
    them again: a repeated message field is just tag, length, bytes."""
    parts = [MAGIC]
    for command in commands:
        parts.append(_COMMANDS_TAG)
        parts.append(_varint(len(command)))
        parts.append(command)
    return b"".join(parts)


def decode(value: bytes) -> pb.LogEntry | None:
    """The log entry in ``value``, or None for an opaque (hand-proposed or
    unparsable) value. The entry is well formed: a no-op carries no commands
    (the rule in the module docstring), so its results are exactly one per
    command it holds."""
    if not value.startswith(MAGIC):
        return None
    entry = pb.LogEntry()
    try:
        entry.ParseFromString(value[len(MAGIC) :])
    except DecodeError:
        return None
    if entry.noop:
        return pb.LogEntry(noop=True)
    return entry


def _varint(n: int) -> bytes:
    out = bytearray()
    while True:
        byte = n & 0x7F
        n >>= 7
        if n:
            out.append(byte | 0x80)
        else:
            out.append(byte)
            return bytes(out)
