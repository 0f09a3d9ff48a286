"""What a key-value command is, before it touches the store: the checks on
keys and sequences, the digest that identifies an operation, and the words of
the "too old" refusal. Every replica must give the same answer, so each of
these depends on the command alone."""

from __future__ import annotations

import hashlib
import re

from paxos_service.v1 import paxos_pb2 as pb

RANGE_LIMIT = 10_000
"""The most keys one range returns, and the most events one history read returns."""

MAX_SEQUENCE = (1 << 63) - 1


def key_error(key: str) -> str | None:
    if not key:
        return "key must not be empty"
    return utf8_error(key)


def utf8_error(text: str) -> str | None:
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        return "key is not valid UTF-8"
    return None


def point_key(command: pb.Command) -> str | None:
    which = command.WhichOneof("op")
    if which == "put":
        return command.put.key
    if which == "delete":
        return command.delete.key
    if which == "compare_and_swap":
        return command.compare_and_swap.key
    if which == "get":
        return command.get.key
    return None


def operation_digest(command: pb.Command) -> bytes:
    """Identifies the operation (not the client or sequence) of a command."""
    which = command.WhichOneof("op")
    digest = hashlib.sha256((which or "").encode())
    if which is not None:
        digest.update(b"\0")
        digest.update(getattr(command, which).SerializeToString(deterministic=True))
    return digest.digest()


#: The digest of a fence (a command with no operation).
FENCE_DIGEST = operation_digest(pb.Command())

_TOO_OLD = re.compile(r"sequence \d+ of client \d+ is too old: ")


def too_old(sequence: int, client_id: int, bound: int) -> str:
    return (
        f"sequence {sequence} of client {client_id} is too old: only "
        f"sequences above {bound} are remembered"
    )


def is_forgotten(result: pb.CommandResult) -> bool:
    """Whether ``result`` is the "too old" refusal: the store forgot the
    request, so whether an earlier copy was applied is unknown (not "failed")."""
    return _TOO_OLD.match(result.error) is not None


def cap_limit(limit: int) -> int:
    return limit if 0 < limit <= RANGE_LIMIT else RANGE_LIMIT
