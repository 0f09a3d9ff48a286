"""Render the kustomizations in k8s/ and read them the way Kubernetes does.

Nothing here talks to a cluster. `render` runs `kubectl kustomize` (which
works offline), and the rest applies the parts of Kubernetes' own semantics
that decide what a container is started with: which Service gives a pod its
DNS name, how `env` is resolved (downward API, ConfigMap keys, `$(VAR)`
expansion), and how `command`/`args` combine with the image's ENTRYPOINT/CMD.
The boot simulation and the structural tests both use these, so the two can
never disagree about what a manifest means.
"""

from __future__ import annotations

import json
import shlex
import shutil
import subprocess
import uuid
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

Obj = dict[str, Any]

REPO = Path(__file__).resolve().parents[2]
K8S = REPO / "k8s"
#: Every kustomization a user may apply; each is checked and booted.
KUSTOMIZATIONS: dict[str, Path] = {
    "base": K8S / "base",
    "example": K8S / "overlays" / "example",
}
DOCKERFILE = REPO / "Dockerfile"
CLUSTER_DOMAIN = "cluster.local"

#: The health service each role reports readiness under (the role's gRPC service).
READINESS_SERVICE = {
    "acceptor": "paxos_service.v1.AcceptorService",
    "proposer": "paxos_service.v1.ProposerService",
    "learner": "paxos_service.v1.LearnerService",
}
LIVENESS_SERVICE = "liveness"
#: The key-value service a learner also serves (and reports health under)
#: when it runs with a database (PAXOS_DB).
KV_SERVICE = "paxos_service.v1.KvService"
#: The server's default for PAXOS_SHUTDOWN_GRACE, in seconds.
DEFAULT_SHUTDOWN_GRACE = 5.0
#: The Secret with every node's (peer) certificate, in cert-manager's layout.
PEER_TLS_SECRET = "paxos-peer-tls"
#: The file names of a cert-manager (kubernetes.io/tls) Secret.
TLS_FILES = ("ca.crt", "tls.crt", "tls.key")


class ManifestError(AssertionError):
    """The manifests cannot work as written; the message says why."""


# ---------------------------------------------------------------------------
# Rendering


def kubectl() -> str:
    """The kubectl binary, or a ManifestError that says what to install."""
    path = shutil.which("kubectl")
    if path is None:
        raise ManifestError(
            "kubectl is not on PATH. The k8s checks render the manifests with "
            "`kubectl kustomize` (offline, no cluster needed). Install a kubectl "
            "client >= 1.27, e.g. `apt-get install -y kubectl` from the Kubernetes "
            "apt repository, or download https://dl.k8s.io/release/v1.32.0/bin/linux/amd64/kubectl "
            "into /usr/local/bin and chmod +x it."
        )
    return path


def render(kustomization: Path) -> str:
    """`kubectl kustomize DIR` as YAML text."""
    proc = subprocess.run(
        [kubectl(), "kustomize", str(kustomization)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        raise ManifestError(f"kubectl kustomize {kustomization} failed:\n{proc.stderr}")
    return proc.stdout


@dataclass(frozen=True)
class Manifests:
    """The objects of one rendered kustomization."""

    source: str
    objects: tuple[Obj, ...]

    @classmethod
    def parse(cls, text: str) -> Manifests:
        objects = tuple(d for d in yaml.safe_load_all(text) if d)
        return cls(source=text, objects=objects)

    def of_kind(self, kind: str) -> list[Obj]:
        return [o for o in self.objects if o.get("kind") == kind]

    def get(self, kind: str, name: str, namespace: str) -> Obj | None:
        for o in self.of_kind(kind):
            if o["metadata"]["name"] == name and namespace_of(o) == namespace:
                return o
        return None

    @property
    def statefulsets(self) -> list[Obj]:
        return self.of_kind("StatefulSet")

    @property
    def services(self) -> list[Obj]:
        return self.of_kind("Service")

    def configmap_data(self, name: str, namespace: str) -> Mapping[str, str] | None:
        cm = self.get("ConfigMap", name, namespace)
        if cm is None:
            return None
        return {str(k): str(v) for k, v in (cm.get("data") or {}).items()}


def namespace_of(obj: Obj) -> str:
    """The namespace an object lands in; `kubectl apply` without -n uses "default"."""
    return str(obj["metadata"].get("namespace") or "default")


def load(name: str) -> Manifests:
    return Manifests.parse(render(KUSTOMIZATIONS[name]))


# ---------------------------------------------------------------------------
# StatefulSets, pods and their DNS names


def role_of(sts: Obj) -> str:
    """The paxos subcommand the StatefulSet's (single) container runs."""
    container = only_container(sts)
    argv = container.get("command", []) + container.get("args", [])
    roles = [str(a) for a in argv if a in READINESS_SERVICE]
    if len(roles) != 1:
        raise ManifestError(f"cannot tell the role of {sts['metadata']['name']}: argv {argv}")
    return roles[0]


def only_container(sts: Obj) -> Obj:
    containers = sts["spec"]["template"]["spec"]["containers"]
    if len(containers) != 1:
        raise ManifestError(f"{sts['metadata']['name']}: expected exactly one container")
    return dict(containers[0])


def sts_of_role(m: Manifests, role: str) -> Obj:
    found = [s for s in m.statefulsets if role_of(s) == role]
    if len(found) != 1:
        raise ManifestError(f"expected one {role} StatefulSet, found {len(found)}")
    return found[0]


def replicas(sts: Obj) -> int:
    return int(sts["spec"].get("replicas", 1))


def selects(selector: Mapping[str, str] | None, labels: Mapping[str, str]) -> bool:
    """A Service's (equality-based) selector matches these pod labels."""
    return bool(selector) and all(labels.get(k) == v for k, v in (selector or {}).items())


def pod_labels(sts: Obj, ordinal: int) -> dict[str, str]:
    """The labels the StatefulSet controller puts on pod `ordinal`."""
    name = f"{sts['metadata']['name']}-{ordinal}"
    labels = dict(sts["spec"]["template"]["metadata"].get("labels") or {})
    labels["statefulset.kubernetes.io/pod-name"] = name
    labels["apps.kubernetes.io/pod-index"] = str(ordinal)
    return labels


def governing_service(m: Manifests, sts: Obj) -> Obj:
    """The headless Service named by spec.serviceName, which gives each pod
    its DNS name. Without it (or if it is not headless, or does not select the
    pods) the names the peers are configured with would not exist."""
    name = sts["spec"].get("serviceName")
    ns = namespace_of(sts)
    svc = m.get("Service", str(name), ns) if name else None
    sts_name = sts["metadata"]["name"]
    if svc is None:
        raise ManifestError(
            f"StatefulSet {sts_name}: serviceName {name!r} is not a Service in {ns}"
        )
    if svc["spec"].get("clusterIP") != "None":
        raise ManifestError(f"Service {name}: must be headless (clusterIP: None)")
    if not selects(svc["spec"].get("selector"), pod_labels(sts, 0)):
        raise ManifestError(f"Service {name}: its selector does not match {sts_name}'s pods")
    return svc


def pod_dns_names(pod: str, subdomain: str, namespace: str) -> list[str]:
    """Every spelling of a StatefulSet pod's DNS name that resolves inside
    the namespace: the FQDN, and the forms completed by the pod's search path
    (`<ns>.svc.cluster.local svc.cluster.local cluster.local`)."""
    base = f"{pod}.{subdomain}"
    return [
        f"{base}.{namespace}.svc.{CLUSTER_DOMAIN}",
        f"{base}.{namespace}.svc",
        f"{base}.{namespace}",
        base,
    ]


def service_dns_names(service: str, namespace: str) -> list[str]:
    return [
        f"{service}.{namespace}.svc.{CLUSTER_DOMAIN}",
        f"{service}.{namespace}.svc",
        f"{service}.{namespace}",
        service,
    ]


def dns_names(m: Manifests) -> list[str]:
    """Every name cluster DNS answers for these manifests' pods and Services:
    what a certificate valid for any name a peer or client may dial lists."""
    names: list[str] = []
    for sts in m.statefulsets:
        subdomain = str(sts["spec"]["serviceName"])
        for ordinal in range(replicas(sts)):
            pod = f"{sts['metadata']['name']}-{ordinal}"
            names += pod_dns_names(pod, subdomain, namespace_of(sts))
    for svc in m.services:
        names += service_dns_names(svc["metadata"]["name"], namespace_of(svc))
    return list(dict.fromkeys(names))


def container_port(container: Obj, target: int | str) -> int:
    """Resolve a Service targetPort (a number or a container port name)."""
    if isinstance(target, int):
        return target
    if str(target).isdigit():
        return int(target)
    for p in container.get("ports") or []:
        if p.get("name") == target:
            return int(p["containerPort"])
    raise ManifestError(f"container {container['name']} has no port named {target!r}")


def client_service(m: Manifests, role: str) -> tuple[Obj, int]:
    """The ClusterIP Service in front of `role`'s pods, and its port."""
    sts = sts_of_role(m, role)
    found = [
        s
        for s in m.services
        if s["spec"].get("clusterIP") != "None"
        and namespace_of(s) == namespace_of(sts)
        and selects(s["spec"].get("selector"), pod_labels(sts, 0))
    ]
    if len(found) != 1:
        raise ManifestError(f"expected one client Service for the {role}s, found {len(found)}")
    ports = found[0]["spec"]["ports"]
    return found[0], int(ports[0]["port"])


# ---------------------------------------------------------------------------
# The container's environment and argv, as the kubelet builds them


@dataclass(frozen=True)
class PodFacts:
    """What the downward API can expose about one pod."""

    name: str
    namespace: str
    ip: str
    labels: Mapping[str, str] = field(default_factory=dict)
    node_name: str = "sim-node"
    host_ip: str = "10.0.0.1"

    def field(self, path: str) -> str:
        simple = {
            "metadata.name": self.name,
            "metadata.namespace": self.namespace,
            "metadata.uid": str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{self.name}.{self.namespace}")),
            "spec.nodeName": self.node_name,
            "spec.serviceAccountName": "default",
            "status.podIP": self.ip,
            "status.podIPs": self.ip,
            "status.hostIP": self.host_ip,
            "status.hostIPs": self.host_ip,
        }
        if path in simple:
            return simple[path]
        prefix = "metadata.labels['"
        if path.startswith(prefix) and path.endswith("']"):
            return self.labels.get(path[len(prefix) : -2], "")
        raise ManifestError(f"the simulation does not support fieldRef {path!r}")


def expand(text: str, env: Mapping[str, str]) -> str:
    """Kubernetes' `$(VAR)` expansion: known variables are replaced, unknown
    references are left as they are, and `$$` escapes a dollar sign."""
    out: list[str] = []
    i = 0
    while i < len(text):
        if text.startswith("$$", i):
            out.append("$")
            i += 2
            continue
        if text.startswith("$(", i):
            end = text.find(")", i + 2)
            if end != -1:
                name = text[i + 2 : end]
                out.append(env.get(name, text[i : end + 1]))
                i = end + 1
                continue
        out.append(text[i])
        i += 1
    return "".join(out)


def container_env(
    m: Manifests,
    container: Obj,
    pod: PodFacts,
    image_env: Mapping[str, str] | None = None,
) -> dict[str, str]:
    """The container's environment: the image's ENV, then `envFrom`, then
    `env` in order (each value may refer to the ones before it)."""
    env: dict[str, str] = dict(image_env or {})
    for source in container.get("envFrom") or []:
        prefix = source.get("prefix", "")
        ref = source.get("configMapRef")
        if ref is None:
            raise ManifestError(f"the simulation supports only configMapRef in envFrom: {source}")
        data = m.configmap_data(ref["name"], pod.namespace)
        if data is None:
            if ref.get("optional"):
                continue
            raise ManifestError(f"envFrom: no ConfigMap {ref['name']} in {pod.namespace}")
        env.update({prefix + k: v for k, v in data.items()})
    for var in container.get("env") or []:
        name = var["name"]
        if "value" in var:
            env[name] = expand(str(var["value"]), env)
            continue
        source = var.get("valueFrom") or {}
        if "fieldRef" in source:
            env[name] = pod.field(source["fieldRef"]["fieldPath"])
        elif "configMapKeyRef" in source:
            ref = source["configMapKeyRef"]
            data = m.configmap_data(ref["name"], pod.namespace)
            if data is None or ref["key"] not in data:
                if ref.get("optional"):
                    continue
                # The kubelet refuses to start such a container
                # (CreateContainerConfigError).
                raise ManifestError(
                    f"env {name}: ConfigMap {ref['name']} key {ref['key']} "
                    f"does not exist in {pod.namespace}"
                )
            env[name] = data[ref["key"]]
        else:
            raise ManifestError(f"env {name}: the simulation does not support {source}")
    return env


def container_argv(container: Obj, image: Image, env: Mapping[str, str]) -> list[str]:
    """`command` replaces the image's ENTRYPOINT (and drops its CMD); `args`
    replaces CMD; `$(VAR)` references are expanded in both."""
    if "command" in container:
        argv = list(container["command"]) + list(container.get("args", []))
    else:
        argv = list(image.entrypoint) + list(container.get("args", image.cmd))
    return [expand(str(a), env) for a in argv]


def shutdown_grace(env: Mapping[str, str]) -> float:
    return float(env.get("PAXOS_SHUTDOWN_GRACE") or DEFAULT_SHUTDOWN_GRACE)


# ---------------------------------------------------------------------------
# The image, read from the Dockerfile's final stage


@dataclass(frozen=True)
class Image:
    entrypoint: tuple[str, ...]
    cmd: tuple[str, ...]
    env: Mapping[str, str]
    uid: int
    gid: int
    workdir: str
    stages: tuple[str, ...]


def _instructions(text: str) -> Iterator[tuple[str, str]]:
    logical = ""
    for raw in text.splitlines():
        line = raw.strip()
        if not logical and (not line or line.startswith("#")):
            continue
        if line.startswith("#"):
            continue
        if line.endswith("\\"):
            logical += line[:-1] + " "
            continue
        logical += line
        word, _, rest = logical.partition(" ")
        yield word.upper(), rest.strip()
        logical = ""


def _exec_form(rest: str) -> tuple[str, ...]:
    if rest.startswith("["):
        return tuple(str(a) for a in json.loads(rest))
    return ("/bin/sh", "-c", rest)


def read_image(dockerfile: Path = DOCKERFILE) -> Image:
    """What the final stage of the Dockerfile sets. ENV, USER, WORKDIR,
    ENTRYPOINT and CMD are all the simulation needs from the image; the
    image's files are stood in for by the host and the project's virtualenv."""
    stages: list[str] = []
    entrypoint: tuple[str, ...] = ()
    cmd: tuple[str, ...] = ()
    env: dict[str, str] = {}
    user = "0"
    workdir = "/"
    for word, rest in _instructions(dockerfile.read_text()):
        if word == "FROM":
            stages.append(rest)
            entrypoint, cmd, env, user, workdir = (), (), {}, "0", "/"
        elif word == "ENTRYPOINT":
            entrypoint = _exec_form(rest)
        elif word == "CMD":
            cmd = _exec_form(rest)
        elif word == "ENV":
            for token in shlex.split(rest):
                key, _, value = token.partition("=")
                env[key] = value
        elif word == "USER":
            user = rest
        elif word == "WORKDIR":
            workdir = rest
    uid_text, _, gid_text = user.partition(":")
    if not uid_text.isdigit() or (gid_text and not gid_text.isdigit()):
        raise ManifestError(
            f"Dockerfile USER {user!r} must be numeric so that Kubernetes can verify runAsNonRoot"
        )
    uid = int(uid_text)
    return Image(
        entrypoint=entrypoint,
        cmd=cmd,
        env=env,
        uid=uid,
        gid=int(gid_text) if gid_text else uid,
        workdir=workdir,
        stages=tuple(stages),
    )
