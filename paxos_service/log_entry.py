"""How log entries are encoded as Paxos values.

A log entry is ``MAGIC + LogEntry`` (protobuf). The magic prefix tells log
entries apart from values someone proposed by hand with the single-decree
``Propose`` API into an instance the log also uses: such a value is an
*opaque* entry, which every replica skips the same way, so the two APIs can
share one instance space without confusing the state machine.
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
    """The log entry in ``value``, or None for an opaque (hand-proposed) value."""
    if not value.startswith(MAGIC):
        return None
    entry = pb.LogEntry()
    try:
        entry.ParseFromString(value[len(MAGIC) :])
    except DecodeError:
        return None
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
