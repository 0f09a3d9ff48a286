"""``/metrics`` over HTTP, for Prometheus to scrape (``--metrics-listen``)."""

from __future__ import annotations

from typing import Any

from prometheus_client import start_http_server

# Imported for its side effect: defining the metrics registers them, and this
# page shows what is registered.
from paxos_service.core import metrics as _definitions  # noqa: F401
from paxos_service.core.logger import get_logger
from paxos_service.transport.errors import BindError


def serve_http(listen: str) -> Any:
    """Serve /metrics over HTTP on ``listen`` (HOST:PORT) from a daemon thread.

    Raises :class:`~paxos_service.transport.errors.BindError` when the address
    cannot be bound: a node whose metrics nobody can scrape is flying blind, so
    it refuses to start rather than run unobserved. Returns the HTTP server
    (``shutdown()`` stops it)."""
    host, _, port = listen.rpartition(":")
    try:
        httpd, _thread = start_http_server(int(port), addr=host.strip("[]"))
    except OSError as exc:
        raise BindError(
            f"cannot serve metrics on {listen}: {exc.strerror or exc} "
            "(is another process using that port? see --metrics-listen)"
        ) from exc
    get_logger().info("serving metrics", address=listen, port=httpd.server_port, path="/metrics")
    return httpd
