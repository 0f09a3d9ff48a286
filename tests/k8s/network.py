"""The network of the boot simulation: network namespaces joined by veth
pairs to a bridge in the hub namespace, and the hosts file and resolv.conf
that stand in for cluster DNS (see netsim for what each piece plays)."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path

from . import manifests as mf
from .host import SimError, run
from .pods import HUB_IP, Pod


def add_netns(name: str, created: list[str]) -> str:
    """Create network namespace ``name``; ``created`` records it for the cleanup."""
    run(["ip", "netns", "add", name])
    created.append(name)
    return name


def make_bridge(hub: str) -> None:
    """The pod network: a bridge in the hub namespace, which holds the node's IP."""
    run(["ip", "-n", hub, "link", "set", "lo", "up"])
    run(["ip", "-n", hub, "link", "add", "br0", "type", "bridge"])
    run(["ip", "-n", hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0"])
    run(["ip", "-n", hub, "link", "set", "br0", "up"])


def plug(hub: str, veth: str, netns: str, ip: str) -> None:
    """Give ``netns`` an eth0 with ``ip``, on the hub's bridge (as ``veth``)."""
    # Both ends are created straight inside their namespaces, so the
    # names never meet in the host's namespace.
    pair = ["type", "veth", "peer", "name", "eth0", "netns", netns]
    run(["ip", "link", "add", "name", veth, "netns", hub, *pair])
    run(["ip", "-n", hub, "link", "set", veth, "master", "br0"])
    run(["ip", "-n", hub, "link", "set", veth, "up"])
    run(["ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0"])
    run(["ip", "-n", netns, "link", "set", "eth0", "up"])
    run(["ip", "-n", netns, "link", "set", "lo", "up"])


def dns_records(manifests: mf.Manifests, pods: Mapping[str, Pod]) -> list[tuple[str, str]]:
    """(ip, name) for every name cluster DNS would answer."""
    records: list[tuple[str, str]] = []
    for pod in pods.values():
        subdomain = pod.sts["spec"]["serviceName"]
        records += [(pod.ip, n) for n in mf.pod_dns_names(pod.name, subdomain, pod.namespace)]
    for svc in manifests.services:
        ns = mf.namespace_of(svc)
        selector = svc["spec"].get("selector")
        backing = [
            p
            for p in pods.values()
            if p.namespace == ns and mf.selects(selector, mf.pod_labels(p.sts, p.ordinal))
        ]
        if not backing:
            continue  # Kubernetes would create the name but nothing behind it.
        names = mf.service_dns_names(svc["metadata"]["name"], ns)
        if svc["spec"].get("clusterIP") == "None":
            if not svc["spec"].get("publishNotReadyAddresses"):
                raise SimError(
                    f"Service {svc['metadata']['name']}: the simulation publishes pod "
                    "names before readiness, so it needs publishNotReadyAddresses: true"
                )
            records += [(p.ip, n) for p in backing for n in names]
            continue
        # A ClusterIP Service: one backing pod stands in for the virtual IP.
        pod = backing[0]
        for port in svc["spec"]["ports"]:
            target = mf.container_port(pod.container, port.get("targetPort", port["port"]))
            if target != int(port["port"]):
                raise SimError(
                    f"Service {svc['metadata']['name']}: port {port['port']} -> "
                    f"{target}; the simulation maps a Service name straight to a pod IP, "
                    "so it needs port == targetPort"
                )
        records += [(pod.ip, n) for n in names]
    return records


def write_etc(
    netns: str,
    hostname: str,
    pods: Mapping[str, Pod],
    hosts: Sequence[tuple[str, str]],
    etc_dirs: list[Path],
) -> None:
    """The hosts file and resolv.conf that ``ip netns exec`` binds over /etc
    in ``netns``; ``etc_dirs`` records the directory for the cleanup."""
    etc = Path("/etc/netns") / netns
    etc.mkdir(parents=True, exist_ok=True)
    etc_dirs.append(etc)
    pod = pods.get(hostname)
    lines = [
        "# Kubernetes-managed hosts file (boot simulation).",
        "127.0.0.1\tlocalhost",
        "::1\tlocalhost ip6-localhost ip6-loopback",
    ]
    if pod is not None:
        # The kubelet's line for the pod itself; only a pod's own bare
        # hostname resolves, never another pod's.
        lines.append(f"{pod.ip}\t{pod.name}")
    # Then what cluster DNS would answer.
    lines += [f"{ip}\t{name}" for ip, name in hosts]
    (etc / "hosts").write_text("\n".join(lines) + "\n")
    # Nothing answers DNS here: every name is in hosts. The search path is
    # the one the kubelet writes for a pod in its namespace; the client
    # lives in the same namespace as the pods.
    namespaces = {p.namespace for p in pods.values()} or {"default"}
    ns = pod.namespace if pod else sorted(namespaces)[0]
    d = mf.CLUSTER_DOMAIN
    (etc / "resolv.conf").write_text(
        f"search {ns}.svc.{d} svc.{d} {d}\nnameserver {HUB_IP}\noptions ndots:5 attempts:1\n"
    )
