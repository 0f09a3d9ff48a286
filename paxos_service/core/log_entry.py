"""How log entries are encoded as Paxos values.

A log entry is ``MAGIC + LogEntry`` (protobuf). The magic prefix tells log
entries apart from values someone proposed by hand with the single-decree
``Propose`` API into an instance the log also uses: such a value is an
*opaque* entry, which every replica skips the same way, so the two APIs can
share one instance space without confusing the state machine.

The prefix is reserved: ``Propose`` refuses a value that begins with it
(:func:`is_reserved`), so no client can hand-make a log entry. A learner still
never trusts a value to be well formed, and :func:`decode` gives every replica
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


def is_reserved(value: bytes) -> bool:
    """Whether ``value`` carries the log's prefix (only the log may propose
    it). The bare no-op is not reserved: it changes nothing, and a learner
    proposes it to repair an instance it cannot learn (see replica.py)."""
    return value.startswith(MAGIC) and value != NOOP


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
