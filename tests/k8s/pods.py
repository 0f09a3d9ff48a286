"""What a pod is here: one replica of a StatefulSet, with its own network
namespace, IP, home directory (its volumes) and log, and the environment its
image gives the container before the manifest's env."""

from __future__ import annotations

import subprocess
from dataclasses import dataclass, field
from pathlib import Path

from . import manifests as mf

VENV_BIN = mf.REPO / ".venv" / "bin"
SUBNET = "10.244.0"
HUB_IP = f"{SUBNET}.1"
CLIENT_IP = f"{SUBNET}.250"


def image_env(image: mf.Image, hostname: str) -> dict[str, str]:
    """The environment a container starts from before the manifest's env."""
    env = {
        "PATH": f"{VENV_BIN}:/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
        "HOSTNAME": hostname,
        "HOME": "/nonexistent",
        "LANG": "C.UTF-8",
    }
    env.update(image.env)
    return env


@dataclass(frozen=True)
class Mount:
    """A volume of the container: the host directory bound at ``target``."""

    source: Path
    target: str
    read_only: bool


@dataclass
class Pod:
    """One replica of a StatefulSet and, once started, its process."""

    name: str
    namespace: str
    sts: mf.Obj
    ordinal: int
    role: str
    netns: str
    ip: str
    home: Path
    log: Path
    process: subprocess.Popen[bytes] | None = None
    starts: int = 0
    #: Set by a test to stand in for a changed ConfigMap value on the next start.
    env_override: dict[str, str] = field(default_factory=dict)

    @property
    def container(self) -> mf.Obj:
        return mf.only_container(self.sts)

    @property
    def pod_spec(self) -> mf.Obj:
        return dict(self.sts["spec"]["template"]["spec"])

    def facts(self) -> mf.PodFacts:
        return mf.PodFacts(
            name=self.name,
            namespace=self.namespace,
            ip=self.ip,
            labels=mf.pod_labels(self.sts, self.ordinal),
            host_ip=HUB_IP,
        )

    def claim_dir(self, claim: str) -> Path:
        """The PersistentVolume bound to this pod's claim `claim`."""
        return self.home / "claims" / f"{claim}-{self.name}"


def plan_pods(manifests: mf.Manifests, workdir: Path, prefix: str) -> dict[str, Pod]:
    """A Pod for every replica of every StatefulSet, in order, each with its
    own network namespace name and IP. Creates nothing."""
    pods: dict[str, Pod] = {}
    next_ip = 10
    for sts in manifests.statefulsets:
        mf.governing_service(manifests, sts)  # the pod DNS names must exist
        for ordinal in range(mf.replicas(sts)):
            name = f"{sts['metadata']['name']}-{ordinal}"
            pods[name] = Pod(
                name=name,
                namespace=mf.namespace_of(sts),
                sts=sts,
                ordinal=ordinal,
                role=mf.role_of(sts),
                netns=f"{prefix}-{name}",
                ip=f"{SUBNET}.{next_ip}",
                home=workdir / "pods" / name,
                log=workdir / "logs" / f"{name}.log",
            )
            next_ip += 1
    return pods
