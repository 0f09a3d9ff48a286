"""Options the ``paxos`` subcommands share: ``PAXOS_<OPTION>`` environment
fallbacks, number types that fail as usage errors, required options, and TLS
(``--tls-ca``/``--tls-cert``/``--tls-key``, and ``--insecure`` for servers)."""

from __future__ import annotations

import argparse
import os
from collections.abc import Callable
from pathlib import Path

from paxos_service.core.config import ConfigError, TlsFiles


def env(option: str) -> str | None:
    """The value of ``PAXOS_<OPTION>``, or None if unset or empty."""
    return os.environ.get("PAXOS_" + option.upper().replace("-", "_")) or None


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"expected a number of seconds, got {text!r}") from None
    if not value >= 0:
        raise ConfigError(f"must be >= 0, got {text!r}")
    return value


def int_at_least(minimum: int) -> Callable[[str], int]:
    def convert(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise ConfigError(f"expected an integer, got {text!r}") from None
        if value < minimum:
            raise ConfigError(f"must be >= {minimum}, got {value}")
        return value

    return convert


def require(parser: argparse.ArgumentParser, args: argparse.Namespace, *names: str) -> None:
    for name in names:
        if getattr(args, name) is None:
            flag = "--" + name.replace("_", "-")
            parser.error(f"{flag} is required (or set PAXOS_{name.upper()})")


def add_tls_options(parser: argparse.ArgumentParser, *, server: bool) -> None:
    """--tls-ca/--tls-cert/--tls-key (and, for servers, --insecure)."""
    who = "this server's" if server else "this client's"
    parser.add_argument(
        "--tls-ca", type=Path, default=env("tls_ca"), help="cluster CA (PEM) [env PAXOS_TLS_CA]"
    )
    parser.add_argument(
        "--tls-cert",
        type=Path,
        default=env("tls_cert"),
        help=f"{who} certificate (PEM), signed by the cluster CA [env PAXOS_TLS_CERT]",
    )
    parser.add_argument(
        "--tls-key",
        type=Path,
        default=env("tls_key"),
        help=f"{who} private key (PEM) [env PAXOS_TLS_KEY]",
    )
    if server:
        parser.add_argument(
            "--insecure",
            action="store_true",
            default=(env("insecure") or "").lower() in ("1", "true", "yes"),
            help="serve plaintext without TLS (only for local testing; logs a warning) "
            "[env PAXOS_INSECURE=true]",
        )


def tls_from_args(args: argparse.Namespace, *, server: bool) -> TlsFiles | None:
    """The TLS files named on the command line, or None for plaintext. A server
    needs either all three files or --insecure; a client needs all three or none."""
    given = {
        "--tls-ca": args.tls_ca,
        "--tls-cert": args.tls_cert,
        "--tls-key": args.tls_key,
    }
    missing = [flag for flag, value in given.items() if value is None]
    insecure = bool(getattr(args, "insecure", False))
    if not missing:
        if insecure:
            raise ConfigError("--insecure and --tls-* are mutually exclusive: pick one")
        return TlsFiles(ca=args.tls_ca, cert=args.tls_cert, key=args.tls_key)
    if len(missing) < len(given):
        raise ConfigError(
            f"TLS needs --tls-ca, --tls-cert and --tls-key; missing {', '.join(missing)}"
        )
    if server and not insecure:
        raise ConfigError(
            "TLS is required: give --tls-ca, --tls-cert and --tls-key (`paxos certs` makes a "
            "development set), or --insecure to serve plaintext"
        )
    return None
