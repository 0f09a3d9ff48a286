"""``paxos certs``: a development CA and the certificates a cluster needs.

    paxos certs --out DIR [--hosts H1,H2,...] [--node NAME=H1,H2 ...] [--days N] [--force]

Every directory it writes has the layout cert-manager gives a Secret of type
``kubernetes.io/tls`` (``ca.crt``, ``tls.crt``, ``tls.key``), so the same
files can be mounted in Kubernetes or passed to ``--tls-ca/--tls-cert/--tls-key``:

    DIR/ca/       the cluster CA (tls.key is the CA's key: keep it off the nodes)
    DIR/peer/     one certificate for every node (OU=peer): serves, and dials peers
    DIR/client/   a client certificate (OU=client): KV, Propose, GetDecision ...
    DIR/<NAME>/   with --node NAME=HOSTS, a peer certificate for that node alone

The role is the certificate subject's organizationalUnit, which the servers
check (see paxos_service/transport/tls.py): a client certificate cannot vote. Keys are
ECDSA P-256: fast to make, and every gRPC TLS stack accepts them.

The helpers (:func:`new_ca`, :func:`issue`, :func:`write_bundle`) take explicit
validity dates so that tests can make expired or not-yet-valid certificates.
"""

from __future__ import annotations

import argparse
import datetime as dt
import ipaddress
import os
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

from cryptography import x509
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.x509.oid import ExtendedKeyUsageOID, NameOID

from paxos_service.core.config import ConfigError
from paxos_service.transport.tls import CLIENT_ROLE, PEER_ROLE

#: Default hosts of the shared peer certificate: enough for a cluster on loopback.
DEFAULT_HOSTS = ("localhost", "127.0.0.1", "::1")
DEFAULT_DAYS = 365
CA_DAYS = 3650
ORGANIZATION = "paxos-service"
#: File names of a cert-manager / kubernetes.io/tls Secret.
CA_FILE, CERT_FILE, KEY_FILE = "ca.crt", "tls.crt", "tls.key"
_RESERVED = {"ca", "peer", "client"}
_DNS_LABEL = re.compile(r"^(\*|[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)$")
_NODE_NAME = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]*$")


@dataclass(frozen=True)
class Issued:
    """A certificate and its private key."""

    cert: x509.Certificate
    key: ec.EllipticCurvePrivateKey


def _now() -> dt.datetime:
    return dt.datetime.now(dt.UTC)


def parse_host(text: str) -> x509.GeneralName:
    """A subjectAltName for ``text``: an IP address, or a DNS name (a ``*``
    only as the whole leftmost label). gRPC checks the name it dialled against these."""
    text = text.strip()
    try:
        return x509.IPAddress(ipaddress.ip_address(text.strip("[]")))
    except ValueError:
        pass
    labels = text.rstrip(".").split(".")
    if (
        not text
        or len(text) > 253
        or not all(_DNS_LABEL.match(label) for label in labels)
        or "*" in labels[1:]
    ):
        raise ConfigError(f"invalid host {text!r}: expected a DNS name or an IP address")
    return x509.DNSName(text.rstrip("."))


def parse_hosts(text: str) -> list[x509.GeneralName]:
    hosts = [h for h in (p.strip() for p in text.split(",")) if h]
    if not hosts:
        raise ConfigError("expected a comma-separated list of host names or IP addresses")
    return [parse_host(h) for h in hosts]


def _name(common_name: str, role: str | None) -> x509.Name:
    attributes = [x509.NameAttribute(NameOID.ORGANIZATION_NAME, ORGANIZATION)]
    if role is not None:
        attributes.append(x509.NameAttribute(NameOID.ORGANIZATIONAL_UNIT_NAME, role))
    attributes.append(x509.NameAttribute(NameOID.COMMON_NAME, common_name))
    return x509.Name(attributes)


def new_ca(
    common_name: str = "paxos-service development CA",
    *,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A self-signed CA, valid from an hour ago (clock skew) for 10 years."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(hours=1)
    end = not_after or start + dt.timedelta(days=CA_DAYS)
    name = _name(common_name, None)
    public = key.public_key()
    cert = (
        x509.CertificateBuilder()
        .subject_name(name)
        .issuer_name(name)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=True, path_length=0), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=True,
                crl_sign=True,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .sign(key, hashes.SHA256())
    )
    return Issued(cert, key)


def issue(
    ca: Issued,
    common_name: str,
    *,
    role: str,
    hosts: Sequence[x509.GeneralName] = (),
    days: int = DEFAULT_DAYS,
    not_before: dt.datetime | None = None,
    not_after: dt.datetime | None = None,
) -> Issued:
    """A certificate signed by ``ca`` for ``role`` (its organizationalUnit).
    A peer certificate serves and dials (serverAuth and clientAuth); a client
    certificate only dials."""
    key = ec.generate_private_key(ec.SECP256R1())
    start = not_before or _now() - dt.timedelta(hours=1)
    end = not_after or start + dt.timedelta(days=days)
    usages = [ExtendedKeyUsageOID.CLIENT_AUTH]
    if role == PEER_ROLE:
        usages.insert(0, ExtendedKeyUsageOID.SERVER_AUTH)
    public = key.public_key()
    builder = (
        x509.CertificateBuilder()
        .subject_name(_name(common_name, role))
        .issuer_name(ca.cert.subject)
        .public_key(public)
        .serial_number(x509.random_serial_number())
        .not_valid_before(start)
        .not_valid_after(end)
        .add_extension(x509.BasicConstraints(ca=False, path_length=None), critical=True)
        .add_extension(
            x509.KeyUsage(
                digital_signature=True,
                content_commitment=False,
                key_encipherment=False,
                data_encipherment=False,
                key_agreement=False,
                key_cert_sign=False,
                crl_sign=False,
                encipher_only=False,
                decipher_only=False,
            ),
            critical=True,
        )
        .add_extension(x509.ExtendedKeyUsage(usages), critical=False)
        .add_extension(x509.SubjectKeyIdentifier.from_public_key(public), critical=False)
        .add_extension(
            x509.AuthorityKeyIdentifier.from_issuer_public_key(ca.key.public_key()),
            critical=False,
        )
    )
    if hosts:
        builder = builder.add_extension(x509.SubjectAlternativeName(list(hosts)), critical=False)
    return Issued(builder.sign(ca.key, hashes.SHA256()), key)


def _pem(cert: x509.Certificate) -> bytes:
    return cert.public_bytes(serialization.Encoding.PEM)


def _write(path: Path, data: bytes, mode: int) -> None:
    """Write ``data`` with ``mode`` from the first byte (a key is never
    readable by others, not even for a moment)."""
    path.unlink(missing_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, mode)
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_bundle(directory: Path, ca_cert: x509.Certificate, issued: Issued) -> list[Path]:
    """``ca.crt``, ``tls.crt`` and ``tls.key`` in ``directory``, as cert-manager
    lays out a Secret. Returns the paths written."""
    directory.mkdir(parents=True, exist_ok=True)
    key = issued.key.private_bytes(
        serialization.Encoding.PEM,
        serialization.PrivateFormat.PKCS8,
        serialization.NoEncryption(),
    )
    paths = [directory / CA_FILE, directory / CERT_FILE, directory / KEY_FILE]
    _write(paths[0], _pem(ca_cert), 0o644)
    _write(paths[1], _pem(issued.cert), 0o644)
    _write(paths[2], key, 0o600)
    return paths


def load_bundle(directory: Path) -> Issued:
    """The certificate and key in ``directory`` (e.g. the CA in ``DIR/ca``)."""
    cert = x509.load_pem_x509_certificate((directory / CERT_FILE).read_bytes())
    key = serialization.load_pem_private_key((directory / KEY_FILE).read_bytes(), password=None)
    if not isinstance(key, ec.EllipticCurvePrivateKey):
        raise ConfigError(f"{directory / KEY_FILE} is not an ECDSA key")
    return Issued(cert, key)


def hosts_of(cert: x509.Certificate) -> list[str]:
    """The subjectAltNames of ``cert`` as text."""
    try:
        san = cert.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    except x509.ExtensionNotFound:
        return []
    return [str(name.value) for name in san]


def generate(
    out: Path,
    *,
    hosts: Sequence[x509.GeneralName] | None = None,
    nodes: dict[str, list[x509.GeneralName]] | None = None,
    days: int = DEFAULT_DAYS,
    force: bool = False,
) -> list[Path]:
    """Make a CA, a shared peer certificate for ``hosts``, a client
    certificate and one peer certificate per entry of ``nodes``, under ``out``.
    Refuses (ConfigError) to replace an existing CA unless ``force``: every
    certificate that CA signed would stop being trusted."""
    ca_dir = out / "ca"
    if (ca_dir / KEY_FILE).exists() and not force:
        raise ConfigError(
            f"{ca_dir} already holds a CA; refusing to replace it (every certificate it "
            "signed would stop being trusted). Use --force to replace it, or another --out"
        )
    for name in nodes or {}:
        if name in _RESERVED or not _NODE_NAME.match(name):
            raise ConfigError(
                f"invalid --node name {name!r}: a file name other than ca, peer and client"
            )
    peer_hosts = list(hosts) if hosts is not None else [parse_host(h) for h in DEFAULT_HOSTS]
    ca = new_ca()
    written = write_bundle(ca_dir, ca.cert, ca)
    peer = issue(ca, "paxos-peer", role=PEER_ROLE, hosts=peer_hosts, days=days)
    written += write_bundle(out / "peer", ca.cert, peer)
    client = issue(ca, "paxos-client", role=CLIENT_ROLE, days=days)
    written += write_bundle(out / "client", ca.cert, client)
    for name, node_hosts in (nodes or {}).items():
        node = issue(ca, name, role=PEER_ROLE, hosts=node_hosts, days=days)
        written += write_bundle(out / name, ca.cert, node)
    return written


# The command ---------------------------------------------------------------


def parse_node(text: str) -> tuple[str, list[x509.GeneralName]]:
    """``NAME=HOST,HOST`` (or just ``NAME``, which is then its only host)."""
    name, sep, hosts = text.partition("=")
    name = name.strip()
    if not name:
        raise ConfigError(f"--node expects NAME=HOST,HOST..., got {text!r}")
    return name, parse_hosts(hosts if sep else name)


def run(args: argparse.Namespace) -> int:
    """``paxos certs`` (the parser is in cli.py, so that other commands do not
    import cryptography): write the files and say what each one is for. A
    ConfigError (an existing CA, a bad host) becomes one line and exit 2."""
    out: Path = args.out
    try:
        hosts = None if args.hosts is None else parse_hosts(args.hosts)
    except ConfigError as exc:
        raise ConfigError(f"--hosts: {exc}") from None
    nodes = dict(parse_node(text) for text in args.node)
    try:
        written = generate(out, hosts=hosts, nodes=nodes, days=args.days, force=args.force)
    except OSError as exc:
        raise ConfigError(f"cannot write to {out}: {exc.strerror or exc}") from None
    print(f"wrote {len(written)} files under {out}/:")
    for path in written:
        print(f"  {path}")
    peer = x509.load_pem_x509_certificate((out / "peer" / CERT_FILE).read_bytes())
    print(f"the peer certificate is valid for: {', '.join(hosts_of(peer))}")
    print(f"servers: --tls-ca {out}/peer/ca.crt --tls-cert {out}/peer/tls.crt", end=" ")
    print(f"--tls-key {out}/peer/tls.key")
    print(f"clients: --tls-ca {out}/client/ca.crt --tls-cert {out}/client/tls.crt", end=" ")
    print(f"--tls-key {out}/client/tls.key")
    print(f"keep {out}/ca/tls.key, the CA's private key, off the nodes")
    return 0
