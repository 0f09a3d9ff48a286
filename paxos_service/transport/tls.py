"""TLS for every server and channel: mutual TLS, every certificate signed by
one cluster CA. See docs/security.md for the model; in short:

- **Authentication is the TLS handshake.** A server with TLS requires a client
  certificate signed by the cluster CA (``--tls-ca``). A caller without one,
  with an expired one, or with one from another CA never gets a connection:
  grpc closes the socket during the handshake, so the caller sees
  UNAVAILABLE "Socket closed". (grpcio cannot ask for an *optional* client
  certificate, so there is no way to let such a caller in and answer
  UNAUTHENTICATED at the RPC level.) :func:`describe_refusal` turns that into
  a message that says so, and the client stubs raise ``AuthenticationError``.
- **Authorization is the certificate's role**, its subject's
  organizationalUnit: ``peer`` for cluster nodes, ``client`` for clients
  (cert-manager sets it with ``subject.organizationalUnits``). Voting and
  telling decisions are for peers only: every ``AcceptorService`` method,
  ``LearnerService/Decide``, and the log's ``ProposerService/Append`` and
  ``Heartbeat``. A client certificate calling one of them gets
  PERMISSION_DENIED from :func:`server_interceptors`. Everything else (KV,
  ``Propose``, ``GetDecision``, ``GetLeader``, health, reflection) takes any
  certificate the CA signed.

The cryptography library is imported only when TLS files are used, so that
plaintext clients start as fast as before.
"""

from __future__ import annotations

import functools
from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass
from inspect import isawaitable
from pathlib import Path
from typing import TYPE_CHECKING, Any, TypeAlias

import grpc

from paxos_service.core import runtime
from paxos_service.core.config import ConfigError, TlsFiles

if TYPE_CHECKING:
    from cryptography import x509

#: The organizationalUnit of a cluster node's certificate: it may vote.
PEER_ROLE = "peer"
#: The organizationalUnit of a client's certificate: KV, Propose, reads.
CLIENT_ROLE = "client"

#: Methods only peers may call: the votes, decisions and the log's plumbing.
_PEER_SERVICES = ("/paxos_service.v1.AcceptorService/",)
_PEER_METHODS = frozenset(
    {
        "/paxos_service.v1.LearnerService/Decide",
        "/paxos_service.v1.ProposerService/Append",
        "/paxos_service.v1.ProposerService/Heartbeat",
    }
)


def peer_only(method: str) -> bool:
    """Whether ``method`` (``/package.Service/Method``) is for peers only."""
    return method.startswith(_PEER_SERVICES) or method in _PEER_METHODS


# Loading and checking the files --------------------------------------------


@dataclass(frozen=True)
class _Pems:
    ca: bytes
    cert: bytes
    key: bytes


def _read(path: Path, flag: str) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise ConfigError(f"cannot read {flag} {path}: {exc.strerror or exc}") from None


def _subject(cert: x509.Certificate) -> str:
    return str(cert.subject.rfc4514_string())


def roles_of(cert: x509.Certificate) -> list[str]:
    """The organizationalUnits in ``cert``'s subject: its roles."""
    from cryptography.x509.oid import NameOID

    return [
        str(a.value) for a in cert.subject.get_attributes_for_oid(NameOID.ORGANIZATIONAL_UNIT_NAME)
    ]


def load(files: TlsFiles, *, server: bool) -> _Pems:
    """The PEM bytes of ``files``, checked, so that a mistake is one clear line
    at start instead of a handshake failure later: each file readable and
    parseable, the key matching the certificate, the certificate valid now,
    and, for a server, a peer certificate (its peers would refuse anything else)."""
    import datetime as dt

    from cryptography import x509
    from cryptography.hazmat.primitives import serialization

    pems = _Pems(
        ca=_read(files.ca, "--tls-ca"),
        cert=_read(files.cert, "--tls-cert"),
        key=_read(files.key, "--tls-key"),
    )
    try:
        if not x509.load_pem_x509_certificates(pems.ca):
            raise ValueError
    except ValueError:
        raise ConfigError(f"--tls-ca {files.ca} holds no PEM certificate") from None
    try:
        cert = x509.load_pem_x509_certificate(pems.cert)
    except ValueError:
        raise ConfigError(f"--tls-cert {files.cert} is not a PEM certificate") from None
    try:
        key = serialization.load_pem_private_key(pems.key, password=None)
    except (ValueError, TypeError):
        raise ConfigError(f"--tls-key {files.key} is not an unencrypted PEM private key") from None
    public = serialization.PublicFormat.SubjectPublicKeyInfo
    der = serialization.Encoding.DER
    if key.public_key().public_bytes(der, public) != cert.public_key().public_bytes(der, public):
        raise ConfigError(f"--tls-key {files.key} is not the key of --tls-cert {files.cert}")
    now = dt.datetime.now(dt.UTC)
    if not cert.not_valid_before_utc <= now <= cert.not_valid_after_utc:
        raise ConfigError(
            f"--tls-cert {files.cert} ({_subject(cert)}) is valid only from "
            f"{cert.not_valid_before_utc:%Y-%m-%d %H:%M} to "
            f"{cert.not_valid_after_utc:%Y-%m-%d %H:%M} UTC"
        )
    if server and PEER_ROLE not in roles_of(cert):
        raise ConfigError(
            f"--tls-cert {files.cert} ({_subject(cert)}) is not a peer certificate: a server "
            f"needs organizationalUnit {PEER_ROLE!r}, or its peers refuse its votes"
        )
    return pems


# Servers ---------------------------------------------------------------------


def server_credentials(files: TlsFiles) -> grpc.ServerCredentials:
    """Credentials that require a client certificate signed by the cluster CA."""
    pems = load(files, server=True)
    return grpc.ssl_server_credentials(
        [(pems.key, pems.cert)], root_certificates=pems.ca, require_client_auth=True
    )


def server_interceptors(files: TlsFiles | None) -> list[grpc.aio.ServerInterceptor[Any, Any]]:
    """Interceptors that authorize callers by their certificate's role (none
    in plaintext, where there is nothing to check)."""
    return [] if files is None else [PeerOnlyInterceptor()]


@functools.lru_cache(maxsize=256)
def _roles_of_pem(pem: bytes) -> tuple[str, tuple[str, ...]]:
    """(subject, roles) of a PEM certificate; cached, since a peer presents
    the same certificate on every call."""
    from cryptography import x509

    cert = x509.load_pem_x509_certificate(pem)
    return _subject(cert), tuple(roles_of(cert))


def denial(auth_context: dict[str, list[bytes]], method: str) -> str | None:
    """Why the caller with ``auth_context`` may not call ``method``, or None
    if it may."""
    if not peer_only(method):
        return None
    pems = auth_context.get("x509_pem_cert") or []
    if not pems:
        return f"{method} is for cluster peers only, and the caller presented no certificate"
    subject, roles = _roles_of_pem(pems[0])
    if PEER_ROLE in roles:
        return None
    return (
        f"{method} is for cluster peers only: the caller's certificate ({subject}) has "
        f"organizationalUnit {', '.join(roles) or '(none)'}, not {PEER_ROLE!r}"
    )


_Handler: TypeAlias = "grpc.RpcMethodHandler[Any, Any]"
#: A handler's behaviour, as grpc hands it over (typed loosely by grpc-stubs).
_Behavior = Callable[..., Any]


if TYPE_CHECKING:
    _ServerInterceptor = grpc.aio.ServerInterceptor[Any, Any]
else:  # generic only in grpc-stubs
    _ServerInterceptor = grpc.aio.ServerInterceptor


class PeerOnlyInterceptor(_ServerInterceptor):
    """PERMISSION_DENIED for a peer-only method called with a certificate that
    is not a peer's. The handshake already checked that the CA signed it; this
    checks what it is for. (An interceptor sees the method name but not the
    caller, so it wraps the handler, which gets the call's context.)"""

    async def intercept_service(
        self,
        continuation: Callable[[grpc.HandlerCallDetails], Awaitable[_Handler]],
        handler_call_details: grpc.HandlerCallDetails,
    ) -> _Handler:
        handler = await continuation(handler_call_details)
        method = handler_call_details.method
        if handler is None or not peer_only(method):
            return handler
        return _guard(handler, method)


def _guard(handler: _Handler, method: str) -> _Handler:
    async def check(context: grpc.aio.ServicerContext[Any, Any]) -> None:
        why = denial(context.auth_context(), method)  # type: ignore[arg-type]
        if why is not None:
            await context.abort(grpc.StatusCode.PERMISSION_DENIED, why)

    def unary(behavior: _Behavior) -> _Behavior:
        async def guarded(request: Any, context: grpc.aio.ServicerContext[Any, Any]) -> Any:
            await check(context)
            result = behavior(request, context)
            return await result if isawaitable(result) else result

        return guarded

    def streaming(behavior: _Behavior) -> _Behavior:
        async def guarded(
            request: Any, context: grpc.aio.ServicerContext[Any, Any]
        ) -> AsyncIterator[Any]:
            await check(context)
            result = behavior(request, context)
            if hasattr(result, "__aiter__"):
                async for item in result:
                    yield item
            elif isawaitable(result):
                await result  # a handler that writes with context.write()

        return guarded

    options = {
        "request_deserializer": handler.request_deserializer,
        "response_serializer": handler.response_serializer,
    }
    if handler.unary_unary is not None:
        return grpc.unary_unary_rpc_method_handler(unary(handler.unary_unary), **options)
    if handler.stream_unary is not None:
        return grpc.stream_unary_rpc_method_handler(unary(handler.stream_unary), **options)
    if handler.unary_stream is not None:
        return grpc.unary_stream_rpc_method_handler(streaming(handler.unary_stream), **options)
    assert handler.stream_stream is not None
    return grpc.stream_stream_rpc_method_handler(streaming(handler.stream_stream), **options)


# Channels --------------------------------------------------------------------


def channel_credentials(files: TlsFiles) -> grpc.ChannelCredentials:
    """Trust the cluster CA only, and present our own certificate."""
    pems = load(files, server=False)
    return grpc.ssl_channel_credentials(pems.ca, pems.key, pems.cert)


def aio_channel(
    address: str, files: TlsFiles | None, options: list[tuple[str, Any]] | None = None
) -> grpc.aio.Channel:
    """An asyncio channel to ``address``: TLS with ``files``, plaintext without
    (in the simulation, the simulated network's; see :mod:`paxos_service.core.runtime`)."""
    simulated = runtime.current()
    if simulated is not None:
        channel: grpc.aio.Channel = simulated.channel(address, options)
        return channel
    if files is None:
        return grpc.aio.insecure_channel(address, options=options)
    return grpc.aio.secure_channel(address, channel_credentials(files), options=options)


def sync_channel(
    address: str, files: TlsFiles | None, options: list[tuple[str, Any]] | None = None
) -> grpc.Channel:
    """A blocking channel to ``address``: TLS with ``files``, plaintext without."""
    if files is None:
        return grpc.insecure_channel(address, options=options)
    return grpc.secure_channel(address, channel_credentials(files), options=options)


# What a refused handshake looks like to the caller -----------------------------

_SERVER_CERT_REFUSED = (
    "Tls handshake failed",
    "TSI_PROTOCOL_FAILURE",
    "Hostname Verification Check failed",
    "CERTIFICATE_VERIFY_FAILED",
)


def describe_refusal(code: grpc.StatusCode | None, details: str, *, tls: bool) -> str | None:
    """If a call failed because the TLS handshake did, say why in words (and
    what to check); None for any other failure.

    grpc reports both sides' refusals as UNAVAILABLE "failed to connect": our
    side refusing the server's certificate carries the TLS error; the server
    refusing ours is just "Socket closed" (it hangs up mid-handshake). Without
    TLS, "Socket closed" may be a TLS server hanging up on plaintext, or just
    a dropped connection: the callers treat that one as a hint, not a verdict."""
    if code is not grpc.StatusCode.UNAVAILABLE:
        return None
    if tls and "WRONG_VERSION_NUMBER" in details:
        return (
            "the server does not speak TLS (is it running with --insecure?); "
            "this client uses --tls-ca/--tls-cert/--tls-key"
        )
    if tls and "Hostname Verification Check failed" in details:
        return (
            "the server's certificate does not name the host this client dialled "
            "(add it to the certificate's hosts, e.g. `paxos certs --hosts`)"
        )
    if tls and any(marker in details for marker in _SERVER_CERT_REFUSED):
        reason = details.rsplit("OPENSSL_internal:", 1)[-1].removesuffix(": OK").strip()
        return (
            "this client refused the server's certificate: it is not signed by the CA "
            f"in --tls-ca, or has expired ({reason})"
        )
    if "Socket closed" in details and "failed to connect" in details:
        if tls:
            return (
                "the server closed the connection during the TLS handshake: it refused "
                "this client's certificate (not signed by the cluster CA, expired, or not "
                "yet valid)"
            )
        return (
            "the server closed the connection; if it requires TLS, give --tls-ca, --tls-cert "
            "and --tls-key (a client certificate signed by the cluster CA)"
        )
    return None
