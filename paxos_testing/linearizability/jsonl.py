"""The JSONL format of a history (:func:`history_to_jsonl`,
:func:`history_from_jsonl`): one JSON object per line, with the fields of
:class:`~paxos_testing.linearizability.history.Operation`. Byte strings
(``value``, ``expected`` and a get's ``output``) are written as
``{"utf8": "text"}`` when they are valid UTF-8 and as ``{"b64": "..."}``
(standard base64) otherwise; ``null`` is ``None``. A cas's ``output`` is a
JSON boolean. ``complete`` is a number, or ``null`` when the outcome is
unknown. Blank lines are ignored.
"""

from __future__ import annotations

import base64
import binascii
import json
import math
import os
from collections.abc import Iterable
from pathlib import Path
from typing import Any, Final

from paxos_testing.linearizability.history import HistoryError, Operation


def history_to_jsonl(ops: Iterable[Operation], path: str | os.PathLike[str]) -> None:
    """Write ``ops`` to ``path``, one JSON object per line (format: module docstring)."""
    with Path(path).open("w", encoding="utf-8") as out:
        for op in ops:
            complete = op.complete
            if complete is not None and not math.isfinite(complete):
                complete = None  # JSON has no infinity; an unknown outcome is null
            record = {
                "client_id": op.client_id,
                "kind": op.kind,
                "key": op.key,
                "value": _encode_bytes(op.value),
                "expected": _encode_bytes(op.expected),
                "invoke": op.invoke,
                "complete": complete,
                "status": op.status,
                "output": op.output if isinstance(op.output, bool) else _encode_bytes(op.output),
            }
            out.write(json.dumps(record, allow_nan=False, ensure_ascii=False) + "\n")


def history_from_jsonl(path: str | os.PathLike[str]) -> list[Operation]:
    """Read a history written by :func:`history_to_jsonl`.

    Raises :class:`HistoryError` (naming the line) for a malformed record.
    """
    ops = []
    with Path(path).open("rb") as lines:
        for number, line in enumerate(lines, start=1):
            if not line.strip():
                continue
            try:
                ops.append(_decode_operation(json.loads(line)))  # UTF-8 errors included
            except (HistoryError, ValueError, TypeError, KeyError) as exc:
                raise HistoryError(f"{path}:{number}: {exc}") from exc
    return ops


_FIELDS: Final = frozenset(
    {"client_id", "kind", "key", "value", "expected", "invoke", "complete", "status", "output"}
)


def _decode_operation(record: Any) -> Operation:
    if not isinstance(record, dict):
        raise HistoryError("a line must hold a JSON object")
    unknown_fields = set(record) - _FIELDS
    if unknown_fields:
        raise HistoryError(f"unknown fields {sorted(unknown_fields)}")
    client_id = record["client_id"]
    if isinstance(client_id, bool) or not isinstance(client_id, int):
        raise HistoryError(f"client_id must be an integer, got {client_id!r}")
    output = record.get("output")
    return Operation(
        client_id=client_id,
        kind=record["kind"],
        key=record["key"],
        value=_decode_bytes(record.get("value")),
        expected=_decode_bytes(record.get("expected")),
        invoke=record["invoke"],
        complete=record.get("complete"),
        status=record["status"],
        output=output if isinstance(output, bool) else _decode_bytes(output),
    )


def _encode_bytes(value: bytes | None) -> dict[str, str] | None:
    if value is None:
        return None
    try:
        return {"utf8": value.decode("utf-8")}
    except UnicodeDecodeError:
        return {"b64": base64.b64encode(value).decode("ascii")}


def _decode_bytes(field: Any) -> bytes | None:
    if field is None:
        return None
    if isinstance(field, dict) and len(field) == 1:
        text = field.get("utf8")
        if isinstance(text, str):
            return text.encode("utf-8")
        encoded = field.get("b64")
        if isinstance(encoded, str):
            try:
                return base64.b64decode(encoded, validate=True)
            except binascii.Error as exc:
                raise HistoryError(f"bad base64 in {field!r}: {exc}") from exc
    raise HistoryError(f'bytes must be null, {{"utf8": ...}} or {{"b64": ...}}, got {field!r}')
