"""Structured JSON logs (structlog) carrying role, node id, instance, ballot
and request id, so that one grep follows a proposal across processes."""

from __future__ import annotations

import logging
import sys
import uuid
from collections.abc import Sequence

import structlog

REQUEST_ID_HEADER = "x-request-id"


def configure(role: str, node_id: int | None, level: str = "info") -> None:
    """JSON lines on stderr; ``role`` and ``node_id`` are on every line."""
    numeric = logging.getLevelName(level.upper())
    if not isinstance(numeric, int):
        raise ValueError(f"unknown log level {level!r}")
    structlog.configure(
        processors=[
            structlog.contextvars.merge_contextvars,
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True),
            structlog.processors.format_exc_info,
            structlog.processors.JSONRenderer(),
        ],
        wrapper_class=structlog.make_filtering_bound_logger(numeric),
        logger_factory=structlog.PrintLoggerFactory(sys.stderr),
        cache_logger_on_first_use=True,
    )
    structlog.contextvars.clear_contextvars()
    structlog.contextvars.bind_contextvars(role=role, node_id=node_id)


def get_logger() -> structlog.typing.FilteringBoundLogger:
    logger: structlog.typing.FilteringBoundLogger = structlog.get_logger()
    return logger


def request_id_from(metadata: Sequence[tuple[str, str | bytes]] | None) -> str:
    """The caller's ``x-request-id``, or a fresh one."""
    for key, value in metadata or ():
        if key == REQUEST_ID_HEADER:
            return value if isinstance(value, str) else value.decode(errors="replace")
    return uuid.uuid4().hex[:16]
