"""What crosses the simulated wire: metadata as grpc checks and hands it
over, the status a server sends, and grpc's message size limits. Shared by
the client and the server side, so it depends on neither."""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Any, NamedTuple

import grpc
import grpc.aio

OK = grpc.StatusCode.OK

MetadataPairs = tuple[tuple[str, str | bytes], ...]

#: grpc's default limit on a received message; sending is unlimited by default.
DEFAULT_MAX_RECEIVE = 4 * 1024 * 1024

#: What ``read()`` returns at the end of a response stream.
EOF: Any = grpc.aio.EOF  # type: ignore[attr-defined]  # missing from grpc-stubs

_KEY_RE = re.compile(r"^[0-9a-z_.\-]+$")


class Status(NamedTuple):
    """What a server call sends back: its status, metadata and (unary) response."""

    code: grpc.StatusCode
    details: str
    trailing: MetadataPairs
    initial: MetadataPairs
    response: bytes | None = None


def as_pairs(metadata: Any) -> MetadataPairs:
    """Metadata as (key, value) tuples, from None, grpc.aio.Metadata or pairs."""
    if metadata is None:
        return ()
    return tuple((str(key), value) for key, value in metadata)


def validate_metadata(metadata: Any) -> MetadataPairs:
    """What grpc checks on metadata a server sends (raises TypeError/ValueError)."""
    if metadata is None:
        return ()
    result = []
    for item in metadata:
        if not isinstance(item, tuple | list) or len(item) != 2:
            raise TypeError(f"metadata item is not a (key, value) pair: {item!r}")
        key, value = item
        if not isinstance(key, str):
            raise TypeError(f"metadata key must be str: {key!r}")
        if not _KEY_RE.match(key):
            raise ValueError(f"metadata key {key!r} is not lowercase ASCII")
        if key.endswith("-bin"):
            if not isinstance(value, bytes):
                raise TypeError(f"binary metadata {key!r} needs a bytes value: {value!r}")
        elif not isinstance(value, str | bytes):
            raise TypeError(f"metadata value for {key!r} must be str: {value!r}")
        result.append((key, value))
    return tuple(result)


def aio_metadata(pairs: MetadataPairs) -> grpc.aio.Metadata:
    return grpc.aio.Metadata(*pairs)


def int_option(options: Sequence[tuple[str, Any]] | None, name: str, default: int) -> int:
    """The last value of channel or server option ``name``, as grpc reads it."""
    value = default
    for key, val in options or ():
        if key == name:
            value = int(val)
    return value


def too_big(size: int, limit: int) -> bool:
    """``size`` breaks a message size limit (a negative limit means none)."""
    return limit >= 0 and size > limit
