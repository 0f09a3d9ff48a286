"""Calls the boot simulation makes from the hub ("node") network namespace.

Run as `ip netns exec HUB python tests/k8s/hubctl.py ...`: gRPC does its own
socket I/O on its own threads, so the only way to make its calls from another
network namespace is a process that lives there.

    probe [--wait SECONDS] TARGET...    TARGET is NAME=IP:PORT/SERVICE@TIMEOUT
    prepare --tls DIR --server-name NAME ADDRESS INSTANCE ROUND PROPOSER_ID

`probe` does what the kubelet's gRPC probe does: a plaintext
grpc.health.v1.Health/Check to the pod IP and the probe's numeric port, with
the probe's service name and timeoutSeconds; only SERVING is a success. With
--wait it repeats until every target succeeds or the deadline passes. It prints
one JSON object {name: status} and exits 0 only if every target is SERVING.
The pods serve those probes on a plaintext health-only port (the kubelet's
gRPC probes cannot do TLS); everything else is mutual TLS.

`prepare` is a peer's phase-1a Prepare to a pod IP, over mutual TLS with the
peer certificate in DIR (ca.crt, tls.crt, tls.key); NAME is the pod's DNS
name, which its certificate lists (no certificate lists a pod IP).
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from dataclasses import dataclass
from pathlib import Path

import grpc
from grpc_health.v1 import health_pb2, health_pb2_grpc


@dataclass(frozen=True)
class Target:
    name: str
    address: str
    service: str
    timeout: float

    @classmethod
    def parse(cls, text: str) -> Target:
        name, _, rest = text.partition("=")
        rest, _, timeout = rest.rpartition("@")
        address, _, service = rest.partition("/")
        return cls(name=name, address=address, service=service, timeout=float(timeout))


def check(channel: grpc.Channel, target: Target) -> str:
    stub = health_pb2_grpc.HealthStub(channel)
    try:
        reply = stub.Check(
            health_pb2.HealthCheckRequest(service=target.service), timeout=target.timeout
        )
    except grpc.RpcError as exc:
        code = exc.code() if isinstance(exc, grpc.Call) else None
        return f"error:{code.name if code else 'unknown'}"
    return str(health_pb2.HealthCheckResponse.ServingStatus.Name(reply.status))


def probe(targets: list[Target], wait: float) -> int:
    deadline = time.monotonic() + wait
    channels = {t.address: grpc.insecure_channel(t.address) for t in targets}
    status: dict[str, str] = {}
    while True:
        for t in targets:
            if status.get(t.name) != "SERVING":
                status[t.name] = check(channels[t.address], t)
        done = all(s == "SERVING" for s in status.values())
        if done or time.monotonic() >= deadline:
            break
        time.sleep(0.1)
    print(json.dumps(status, sort_keys=True))
    return 0 if done else 1


def prepare(
    address: str, instance: int, round_: int, proposer_id: int, tls_dir: Path, server_name: str
) -> int:
    """Send one phase-1a Prepare and print what came back: {"promise": ...},
    {"reject": ...} or {"error": CODE}."""
    from google.protobuf import json_format

    from paxos_service.core.config import TlsFiles
    from paxos_service.transport import tls
    from paxos_service.v1 import paxos_pb2, paxos_pb2_grpc

    request = paxos_pb2.PrepareRequest(
        prepare=paxos_pb2.Prepare(
            instance=instance,
            ballot=paxos_pb2.Ballot(round=round_, proposer_id=proposer_id),
        )
    )
    files = TlsFiles(tls_dir / "ca.crt", tls_dir / "tls.crt", tls_dir / "tls.key")
    options = [("grpc.ssl_target_name_override", server_name)]
    with tls.sync_channel(address, files, options) as channel:
        try:
            reply = paxos_pb2_grpc.AcceptorServiceStub(channel).Prepare(request, timeout=5)
        except grpc.RpcError as exc:
            code = exc.code() if isinstance(exc, grpc.Call) else None
            print(json.dumps({"error": code.name if code else "unknown"}))
            return 0
    print(json.dumps(json_format.MessageToDict(reply)))
    return 0


def main(argv: list[str]) -> int:
    parser = argparse.ArgumentParser(prog="hubctl")
    sub = parser.add_subparsers(dest="command", required=True)
    p = sub.add_parser("probe")
    p.add_argument("--wait", type=float, default=0.0)
    p.add_argument("targets", nargs="+", type=Target.parse)
    q = sub.add_parser("prepare")
    q.add_argument("--tls", type=Path, required=True)
    q.add_argument("--server-name", required=True)
    q.add_argument("address")
    q.add_argument("instance", type=int)
    q.add_argument("round", type=int)
    q.add_argument("proposer_id", type=int)
    args = parser.parse_args(argv)
    if args.command == "probe":
        return probe(args.targets, args.wait)
    return prepare(
        args.address, args.instance, args.round, args.proposer_id, args.tls, args.server_name
    )


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
