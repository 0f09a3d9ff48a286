"""What every role's gRPC server shares: health, reflection, signal handling,
socket options and request-scoped logging. Metrics (the interceptor and the
``/metrics`` endpoint) are turned on here, and live in their own modules."""

from __future__ import annotations

import asyncio
import signal
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

import grpc
import structlog
from grpc_health.v1 import health, health_pb2, health_pb2_grpc
from grpc_reflection.v1alpha import reflection

from paxos_service.core import runtime
from paxos_service.core.config import ServerConfig
from paxos_service.core.logger import get_logger, request_id_from
from paxos_service.transport import tls
from paxos_service.transport.channels import MESSAGE_OVERHEAD
from paxos_service.transport.errors import BindError
from paxos_service.transport.instrumentation import server_interceptors
from paxos_service.transport.metrics_http import serve_http

#: Health service name for liveness probes: SERVING while the process runs.
LIVENESS = "liveness"


def server_options(max_value_bytes: int) -> list[tuple[str, Any]]:
    size = max_value_bytes + MESSAGE_OVERHEAD
    return [
        # grpcio turns SO_REUSEPORT on by default, which lets a second server
        # silently share a busy port. We want that bind to fail loudly.
        ("grpc.so_reuseport", 0),
        ("grpc.max_receive_message_length", size),
        ("grpc.max_send_message_length", size),
    ]


@dataclass
class RoleServer:
    """A started gRPC server with its health servicer."""

    server: grpc.aio.Server
    health: Any  # grpc_health.v1.health.aio.HealthServicer (untyped in grpc-stubs)
    port: int
    service_name: str
    extra_services: tuple[str, ...] = ()
    #: The plaintext health-only server (--health-listen), if any.
    health_server: grpc.aio.Server | None = None

    async def set_health(self, name: str, serving: bool) -> None:
        """One health name of its own (not the role's readiness)."""
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(name, status)

    async def set_serving(self, serving: bool) -> None:
        status = (
            health_pb2.HealthCheckResponse.SERVING
            if serving
            else health_pb2.HealthCheckResponse.NOT_SERVING
        )
        await self.health.set(self.service_name, status)
        for name in self.extra_services:
            await self.health.set(name, status)
        await self.health.set("", status)


async def start_server(
    config: ServerConfig,
    service_name: str,
    register: Callable[[grpc.aio.Server], None],
    *,
    serving: bool = True,
    extra_services: tuple[str, ...] = (),
) -> RoleServer:
    """Build, bind and start a server exposing ``service_name`` plus health and
    reflection. Raises :class:`BindError` when the address cannot be bound.
    In the simulation, the simulated network listens instead."""
    simulated = runtime.current()
    if simulated is not None:
        role: RoleServer = await simulated.serve(
            config, service_name, register, serving=serving, extra_services=extra_services
        )
        return role

    # Counting every RPC costs a few per cent of CPU: only when someone can read it.
    counting = server_interceptors() if config.metrics_listen is not None else []
    interceptors = [*counting, *tls.server_interceptors(config.tls)]
    server = grpc.aio.server(
        options=server_options(config.max_value_bytes), interceptors=interceptors
    )
    register(server)
    health_servicer = health.aio.HealthServicer()  # type: ignore[attr-defined]
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    reflection.enable_server_reflection(
        (service_name, *extra_services, health.SERVICE_NAME, reflection.SERVICE_NAME), server
    )
    try:
        if config.tls is None:
            get_logger().warning(
                "serving plaintext without TLS: anyone who can reach this port can vote "
                "or read; use --tls-ca/--tls-cert/--tls-key outside local testing",
                listen=config.listen,
            )
            port = server.add_insecure_port(config.listen)
        else:
            port = server.add_secure_port(config.listen, tls.server_credentials(config.tls))
    except RuntimeError as exc:
        raise BindError(f"cannot listen on {config.listen}: {exc}") from exc
    if port == 0:
        raise BindError(f"cannot listen on {config.listen}: address in use or not available")
    if config.metrics_listen is not None:
        serve_http(config.metrics_listen)  # before start: a busy port stops us cleanly
    await server.start()
    health_server = None
    if config.health_listen is not None:
        health_server = await _start_health_only(config.health_listen, health_servicer, server)
    role = RoleServer(server, health_servicer, port, service_name, extra_services, health_server)
    await health_servicer.set(LIVENESS, health_pb2.HealthCheckResponse.SERVING)
    await role.set_serving(serving)
    return role


async def _start_health_only(
    listen: str, health_servicer: Any, main: grpc.aio.Server
) -> grpc.aio.Server:
    """A second server with the same health servicer and nothing else, in
    plaintext: Kubernetes' gRPC probes cannot do TLS, let alone present a
    client certificate. It reveals only SERVING/NOT_SERVING; every other
    service stays behind mutual TLS on the main port."""
    server = grpc.aio.server(options=[("grpc.so_reuseport", 0)])
    health_pb2_grpc.add_HealthServicer_to_server(health_servicer, server)
    try:
        port = server.add_insecure_port(listen)
    except RuntimeError as exc:
        port = 0
        error = f": {exc}"
    else:
        error = ": address in use or not available"
    if port == 0:
        await main.stop(None)
        raise BindError(f"cannot listen on {listen} (--health-listen){error}")
    await server.start()
    get_logger().info("serving grpc.health.v1 alone, in plaintext, for probes", listen=listen)
    return server


async def run_until_signalled(role: RoleServer, grace: float) -> None:
    """Serve until SIGTERM or SIGINT, then shut down gracefully: health goes
    NOT_SERVING, new calls are refused, calls in flight get ``grace`` seconds."""
    logger = get_logger()
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    waiter = asyncio.create_task(role.server.wait_for_termination())
    stopper = asyncio.create_task(stop.wait())
    await asyncio.wait({waiter, stopper}, return_when=asyncio.FIRST_COMPLETED)
    if stop.is_set():
        logger.info("shutting down", grace_seconds=grace)
        await role.health.enter_graceful_shutdown()
        await role.server.stop(grace)
    if role.health_server is not None:
        await role.health_server.stop(None)
    waiter.cancel()
    stopper.cancel()
    logger.info("stopped")


def bind_request(context: grpc.aio.ServicerContext[Any, Any], **fields: Any) -> None:
    """Put the request id (from ``x-request-id`` or fresh) and ``fields`` on
    every log line of this RPC. Each RPC runs in its own task, so this is
    scoped to the call."""
    request_id = request_id_from(context.invocation_metadata())  # type: ignore[arg-type]
    structlog.contextvars.bind_contextvars(request_id=request_id, **fields)
