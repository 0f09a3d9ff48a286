"""Boot rendered manifests as real processes, one network namespace per pod.

This stands in for a Kubernetes node closely enough to prove the manifests'
wiring. What each piece plays:

- A hub network namespace holds a bridge (the pod network) and is the node:
  probes go from there to the pod IPs, as the kubelet's do.
- Every replica of every StatefulSet is a pod: its own network namespace with
  one veth (eth0) on the bridge and its own IP.
- DNS is `/etc/netns/<NS>/hosts`, which `ip netns exec` bind-mounts over
  /etc/hosts. It holds what CoreDNS would answer: every spelling of every
  StatefulSet pod name (publishNotReadyAddresses: true publishes them before
  the pods are ready), and each ClusterIP Service name mapped to one backing
  pod's IP. Only names the manifests really create are written, so a peer
  address that Kubernetes could not resolve cannot be resolved here either.
- The container starts with the env and argv the kubelet would give it (see
  manifests.container_env/container_argv; downward-API values filled in) and
  nothing inherited from the test runner.
- The "image" is this host plus the project's virtualenv: the Dockerfile's
  ENTRYPOINT, CMD, ENV and WORKDIR apply, and .venv/bin comes first on PATH.
- Volumes are honoured at their mountPath, in a private mount namespace per
  pod (`unshare --mount`). We do not rewrite PAXOS_DB or --db: the server gets
  exactly the path in the manifest, so a DB path outside the volume ends up on
  the read-only root and fails, as it would in the cluster. A
  volumeClaimTemplate is a per-pod directory that outlives restarts; an
  emptyDir is a fresh one per start. A mountPath the host lacks (such as
  /var/lib/paxos, which the image creates) is made on a throwaway overlay of
  its parent, so the host's filesystem is never changed.
- A Secret volume is the kubelet's projection of a Secret the test provides
  as a directory of files (`Cluster.secrets`, by Secret name): a fresh copy
  per start, owned by root, with the volume's defaultMode (0644 unless set),
  and, with fsGroup, group fsGroup and group-readable, as the kubelet does;
  mounted read-only. A Secret nobody provided stops the pod, as a missing one
  leaves it in ContainerCreating.
- `kubectl exec` is `nsenter` into the pod's network and mount namespaces,
  with the container's env, user and privileges (Cluster.exec).
- securityContext is applied: readOnlyRootFilesystem remounts / read-only in
  the pod's mount namespace; runAsUser/runAsGroup/fsGroup become the process's
  ids (setpriv), and fsGroup makes the volumes group-writable as the kubelet
  does; allowPrivilegeEscalation: false is no_new_privs; dropping ALL
  capabilities clears the bounding set. runAsNonRoot with uid 0 is refused.

Not simulated: Service load balancing (a Service name is one pod's IP, so its
port must equal the target port), CPU and memory limits, the probes'
periods (we poll faster, to keep the suite quick), and Secret updates on a
running pod.
"""

from __future__ import annotations

import contextlib
import json
import os
import shlex
import shutil
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from . import manifests as mf

VENV_BIN = mf.REPO / ".venv" / "bin"
HUBCTL = Path(__file__).resolve().parent / "hubctl.py"
SUBNET = "10.244.0"
HUB_IP = f"{SUBNET}.1"
CLIENT_IP = f"{SUBNET}.250"
PROBE_KINDS = ("startupProbe", "livenessProbe", "readinessProbe")
#: The tests wait at most this long for a pod to stop after SIGTERM, even if
#: the manifest's grace period is longer.
MAX_STOP_WAIT = 10.0


class SimError(RuntimeError):
    """The simulation itself could not do something (not a manifest bug)."""


def require_root_and_iproute2() -> None:
    """The boot simulation creates network and mount namespaces."""
    problems = []
    if os.geteuid() != 0:
        problems.append(
            "it must run as root (it creates network namespaces, veth pairs and "
            "mount namespaces); run `make k8s-check` as root, as CI does"
        )
    for tool in ("ip", "unshare", "setpriv", "mount", "nsenter"):
        if shutil.which(tool) is None:
            problems.append(f"`{tool}` is missing: apt-get install -y iproute2 util-linux mount")
    if problems:
        raise SimError("The k8s boot simulation cannot run: " + "; ".join(problems))


def _run(argv: Sequence[str], timeout: float = 30) -> str:
    proc = subprocess.run(list(argv), capture_output=True, text=True, timeout=timeout, check=False)
    if proc.returncode != 0:
        raise SimError(f"{shlex.join(argv)} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


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
    source: Path
    target: str
    read_only: bool


@dataclass
class Pod:
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


@dataclass
class Cluster:
    """One booted copy of a rendered kustomization."""

    manifests: mf.Manifests
    image: mf.Image
    workdir: Path
    prefix: str
    pods: dict[str, Pod] = field(default_factory=dict)
    hub: str = ""
    client_ns: str = ""
    _netns: list[str] = field(default_factory=list)
    _etc_dirs: list[Path] = field(default_factory=list)
    _stash_dirs: list[Path] = field(default_factory=list)
    hosts: list[tuple[str, str]] = field(default_factory=list)
    #: Secrets that exist in the namespace: name -> a directory of its files.
    secrets: Mapping[str, Path] = field(default_factory=dict)
    #: The files a client outside the pods uses for TLS (ca.crt, tls.crt,
    #: tls.key), e.g. `paxos certs`'s client directory.
    client_tls: Path | None = None

    # -- building the network ------------------------------------------------

    def create(self) -> None:
        """Plan the pods, then build the hub, the pods' and the client's
        namespaces and their hosts files. Starts nothing."""
        self.workdir.mkdir(parents=True, exist_ok=True)
        (self.workdir / "logs").mkdir(exist_ok=True)
        next_ip = 10
        for sts in self.manifests.statefulsets:
            mf.governing_service(self.manifests, sts)  # the pod DNS names must exist
            for ordinal in range(mf.replicas(sts)):
                name = f"{sts['metadata']['name']}-{ordinal}"
                self.pods[name] = Pod(
                    name=name,
                    namespace=mf.namespace_of(sts),
                    sts=sts,
                    ordinal=ordinal,
                    role=mf.role_of(sts),
                    netns=f"{self.prefix}-{name}",
                    ip=f"{SUBNET}.{next_ip}",
                    home=self.workdir / "pods" / name,
                    log=self.workdir / "logs" / f"{name}.log",
                )
                next_ip += 1
        self.hosts = self._dns_records()

        self.hub = self._add_netns(f"{self.prefix}-hub")
        _run(["ip", "-n", self.hub, "link", "set", "lo", "up"])
        _run(["ip", "-n", self.hub, "link", "add", "br0", "type", "bridge"])
        _run(["ip", "-n", self.hub, "addr", "add", f"{HUB_IP}/24", "dev", "br0"])
        _run(["ip", "-n", self.hub, "link", "set", "br0", "up"])
        endpoints = [(p.netns, p.ip, p.name) for p in self.pods.values()]
        self.client_ns = f"{self.prefix}-client"
        endpoints.append((self.client_ns, CLIENT_IP, "client"))
        for index, (netns, ip, hostname) in enumerate(endpoints):
            self._add_netns(netns)
            veth = f"v{index}"
            # Both ends are created straight inside their namespaces, so the
            # names never meet in the host's namespace.
            pair = ["type", "veth", "peer", "name", "eth0", "netns", netns]
            _run(["ip", "link", "add", "name", veth, "netns", self.hub, *pair])
            _run(["ip", "-n", self.hub, "link", "set", veth, "master", "br0"])
            _run(["ip", "-n", self.hub, "link", "set", veth, "up"])
            _run(["ip", "-n", netns, "addr", "add", f"{ip}/24", "dev", "eth0"])
            _run(["ip", "-n", netns, "link", "set", "eth0", "up"])
            _run(["ip", "-n", netns, "link", "set", "lo", "up"])
            self._write_etc(netns, hostname)

    def _add_netns(self, name: str) -> str:
        _run(["ip", "netns", "add", name])
        self._netns.append(name)
        return name

    def _dns_records(self) -> list[tuple[str, str]]:
        """(ip, name) for every name cluster DNS would answer."""
        records: list[tuple[str, str]] = []
        for pod in self.pods.values():
            subdomain = pod.sts["spec"]["serviceName"]
            records += [(pod.ip, n) for n in mf.pod_dns_names(pod.name, subdomain, pod.namespace)]
        for svc in self.manifests.services:
            ns = mf.namespace_of(svc)
            selector = svc["spec"].get("selector")
            backing = [
                p
                for p in self.pods.values()
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

    def _write_etc(self, netns: str, hostname: str) -> None:
        etc = Path("/etc/netns") / netns
        etc.mkdir(parents=True, exist_ok=True)
        self._etc_dirs.append(etc)
        pod = self.pods.get(hostname)
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
        lines += [f"{ip}\t{name}" for ip, name in self.hosts]
        (etc / "hosts").write_text("\n".join(lines) + "\n")
        # Nothing answers DNS here: every name is in hosts. The search path is
        # the one the kubelet writes for a pod in its namespace; the client
        # lives in the same namespace as the pods.
        namespaces = {p.namespace for p in self.pods.values()} or {"default"}
        ns = pod.namespace if pod else sorted(namespaces)[0]
        d = mf.CLUSTER_DOMAIN
        (etc / "resolv.conf").write_text(
            f"search {ns}.svc.{d} svc.{d} {d}\nnameserver {HUB_IP}\noptions ndots:5 attempts:1\n"
        )

    # -- pods ----------------------------------------------------------------

    def backend(self, service: str) -> Pod:
        """The pod a Service name resolves to here (for a ClusterIP Service,
        the one pod that stands in for its virtual IP)."""
        ips = {ip for ip, name in self.hosts if name == service}
        pods = [p for p in self.pods.values() if p.ip in ips]
        if len(pods) != 1:
            raise SimError(f"Service {service} resolves to {len(pods)} pods here, not one")
        return pods[0]

    def env_of(self, pod: Pod) -> dict[str, str]:
        env = mf.container_env(
            self.manifests, pod.container, pod.facts(), image_env(self.image, pod.name)
        )
        return env | pod.env_override

    def argv_of(self, pod: Pod) -> list[str]:
        return mf.container_argv(pod.container, self.image, self.env_of(pod))

    def _mounts(self, pod: Pod) -> list[Mount]:
        spec = pod.pod_spec
        volumes = {v["name"]: v for v in spec.get("volumes") or []}
        claims = {c["metadata"]["name"] for c in pod.sts["spec"].get("volumeClaimTemplates") or []}
        security = spec.get("securityContext") or {}
        fs_group = security.get("fsGroup")
        mounts = []
        for vm in pod.container.get("volumeMounts") or []:
            name = vm["name"]
            if "subPath" in vm or "subPathExpr" in vm:
                raise SimError(f"{pod.name}: the simulation does not support subPath")
            if name in claims:
                source = pod.claim_dir(name)
                fresh = not source.exists()
                source.mkdir(parents=True, exist_ok=True)
                if fresh:
                    # A new PersistentVolume's root, after the kubelet applied
                    # fsGroup (group-owned, group-writable, setgid).
                    os.chmod(source, 0o755)
                    if fs_group is not None:
                        os.chown(source, 0, int(fs_group))
                        os.chmod(source, 0o2775)
            elif name in volumes and "emptyDir" in volumes[name]:
                source = pod.home / "emptydir" / f"{name}-{pod.starts}"
                source.mkdir(parents=True, exist_ok=True)
                os.chmod(source, 0o777)
                if fs_group is not None:
                    os.chown(source, 0, int(fs_group))
                    os.chmod(source, 0o2777)
            elif name in volumes and "secret" in volumes[name]:
                source = self._project_secret(pod, name, volumes[name]["secret"], fs_group)
                # The kubelet mounts Secret volumes read-only, whatever the mount says.
                mounts.append(Mount(source, vm["mountPath"], True))
                continue
            else:
                raise SimError(
                    f"{pod.name}: volume {name!r} is neither a claim, an emptyDir nor a Secret"
                )
            mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
        return mounts

    def _project_secret(self, pod: Pod, volume: str, spec: mf.Obj, fs_group: Any) -> Path:
        """The files of Secret ``spec["secretName"]`` as the kubelet lays them
        out for this start of the pod (see the module docstring)."""
        name = spec["secretName"]
        if spec.get("items"):
            raise SimError(f"{pod.name}: the simulation does not support Secret items")
        files = self.secrets.get(name)
        if files is None and not spec.get("optional"):
            raise mf.ManifestError(
                f"{pod.name}: Secret {name!r} does not exist in {pod.namespace}; the kubelet "
                "would leave the pod in ContainerCreating"
            )
        source = pod.home / "secrets" / f"{volume}-{pod.starts}"
        source.mkdir(parents=True, exist_ok=True)
        os.chmod(source, 0o755)
        mode = int(spec.get("defaultMode", 0o644))
        for path in sorted(files.iterdir()) if files is not None else []:
            if not path.is_file():
                continue
            target = source / path.name
            shutil.copyfile(path, target)
            if fs_group is None:
                os.chown(target, 0, 0)
                os.chmod(target, mode)
            else:
                os.chown(target, 0, int(fs_group))
                os.chmod(target, mode | 0o440)
        return source

    def _ids(self, pod: Pod) -> tuple[int, int, list[int], mf.Obj]:
        pod_sc = pod.pod_spec.get("securityContext") or {}
        ctr_sc = pod.container.get("securityContext") or {}

        def pick(key: str) -> Any:
            return ctr_sc.get(key, pod_sc.get(key))

        uid = int(pick("runAsUser") if pick("runAsUser") is not None else self.image.uid)
        gid = int(pick("runAsGroup") if pick("runAsGroup") is not None else self.image.gid)
        if pick("runAsNonRoot") and uid == 0:
            raise mf.ManifestError(
                f"{pod.name}: runAsNonRoot is set but the container would run as uid 0; "
                "the kubelet refuses to start it (CreateContainerConfigError)"
            )
        groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
        if pod_sc.get("fsGroup") is not None:
            groups.insert(0, int(pod_sc["fsGroup"]))
        return uid, gid, groups, ctr_sc

    def _launch_script(self, pod: Pod) -> str:
        """The shell that sets up the pod's mount namespace, then execs the
        container's process (so the PID we hold is the server's)."""
        mounts = self._mounts(pod)
        uid, _gid, _groups, ctr_sc = self._ids(pod)
        lines = ["set -eu"]
        overlays: list[str] = []

        def overlay(lower: Path, extra_mode: int = 0) -> None:
            """Stack a throwaway writable layer on `lower`, in this pod's
            mount namespace only; the host's directory is never changed."""
            layer = pod.home / "image-layer" / str(len(overlays))
            for sub in ("upper", "work"):
                (layer / sub).mkdir(parents=True, exist_ok=True)
            st = lower.stat()
            os.chown(layer / "upper", st.st_uid, st.st_gid)
            os.chmod(layer / "upper", (st.st_mode & 0o7777) | extra_mode)
            options = f"lowerdir={lower},upperdir={layer / 'upper'},workdir={layer / 'work'}"
            lines.append(
                f"mount -t overlay overlay -o {shlex.quote(options)} {shlex.quote(str(lower))}"
            )
            overlays.append(str(lower))

        # The image stand-in must be usable by the container's uid, as the
        # real image's /usr/local is. Where the host's Python or the checkout
        # sits below a directory others cannot enter (pyenv under a 0700
        # /root, say), that directory is opened up (o+rx) for this pod only.
        if uid != 0:
            for place in (Path(sys.base_prefix).resolve(), mf.REPO):
                for directory in reversed(place.parents):
                    if str(directory) not in overlays and not directory.stat().st_mode & 0o001:
                        overlay(directory, extra_mode=0o005)

        # mountPaths the host lacks (the image creates /var/lib/paxos; the
        # container runtime creates /etc/paxos/tls for the Secret) are made
        # on an overlay of their nearest existing parent.
        for m in mounts:
            if os.path.isdir(m.target):
                continue
            parent = Path(m.target).parent
            while not parent.is_dir():
                parent = parent.parent
            if str(parent) == "/":
                raise SimError(f"{pod.name}: cannot create mountPath {m.target} under /")
            if str(parent) not in overlays:
                overlay(parent)
                if parent == Path("/etc"):
                    # The overlay hides the files `ip netns exec` bound over
                    # /etc (hosts, resolv.conf: the pod's DNS); bind them again.
                    netns_etc = Path("/etc/netns") / pod.netns
                    for f in sorted(netns_etc.iterdir()) if netns_etc.is_dir() else []:
                        lines.append(
                            f"mount --bind {shlex.quote(str(f))} "
                            f"{shlex.quote(str(Path('/etc') / f.name))}"
                        )
            lines.append(f"mkdir -p {shlex.quote(m.target)}")

        # The image stand-in (the checkout, the host's Python) must stay
        # visible when a volume is mounted over a directory holding it: CI may
        # clone under /tmp, where the pods mount an emptyDir. Bind it aside
        # first (under /run, which no volume covers), and back once the
        # volumes are in place.
        restores: list[tuple[Path, Path]] = []
        for place in dict.fromkeys((mf.REPO, Path(sys.base_prefix).resolve())):
            if not any(place.is_relative_to(m.target) for m in mounts):
                continue
            stash = Path("/run") / f"paxos-netsim-{os.getpid()}" / pod.name / str(len(restores))
            if any(stash.is_relative_to(m.target) for m in mounts):
                raise SimError(f"{pod.name}: a volume covers {stash}, nowhere to keep {place}")
            stash.mkdir(parents=True, exist_ok=True)
            self._stash_dirs.append(stash.parent.parent)
            lines.append(f"mount --bind {shlex.quote(str(place))} {shlex.quote(str(stash))}")
            restores.append((stash, place))

        # Mount a volume over a directory that holds other volumes' sources
        # (an emptyDir on /tmp, say) only after those are mounted.
        def shadows(m: Mount) -> bool:
            return any(str(o.source).startswith(m.target.rstrip("/") + "/") for o in mounts)

        for m in sorted(mounts, key=shadows):
            lines.append(f"mount --bind {shlex.quote(str(m.source))} {shlex.quote(m.target)}")
            if m.read_only:
                lines.append(f"mount -o remount,bind,ro {shlex.quote(m.target)}")
        for stash, place in restores:
            lines.append(f"mkdir -p {shlex.quote(str(place))}")
            lines.append(f"mount --bind {shlex.quote(str(stash))} {shlex.quote(str(place))}")
        if ctr_sc.get("readOnlyRootFilesystem"):
            lines.append("mount -o remount,bind,ro /")
            # An overlay that a volume now covers (say /tmp/tmp.XXXX, opened up
            # because mktemp made it 0700, under the pod's /tmp emptyDir) is
            # out of sight: the path is a plain directory of that volume now.
            lines += [
                f"mount -o remount,bind,ro {shlex.quote(o)}"
                for o in overlays
                if not any(Path(o).is_relative_to(m.target) for m in mounts)
            ]
        lines.append(f"cd {shlex.quote(self._workdir(pod))}")
        lines.append(f'exec {shlex.join(self._setpriv(pod))} -- "$@"')
        return "\n".join(lines)

    def _workdir(self, pod: Pod) -> str:
        return str(pod.container.get("workingDir") or self.image.workdir)

    def _setpriv(self, pod: Pod) -> list[str]:
        """The container's user, groups and privileges, as a setpriv prefix."""
        uid, gid, groups, ctr_sc = self._ids(pod)
        setpriv = [
            "setpriv",
            f"--reuid={uid}",
            f"--regid={gid}",
            f"--groups={','.join(map(str, groups))}" if groups else "--clear-groups",
        ]
        if ctr_sc.get("allowPrivilegeEscalation") is False:
            setpriv.append("--no-new-privs")
        if "ALL" in ((ctr_sc.get("capabilities") or {}).get("drop") or []):
            setpriv += ["--inh-caps=-all", "--bounding-set=-all"]
        return setpriv

    def exec(
        self, pod: Pod, argv: Sequence[str], timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """`kubectl exec POD -- argv`: run a command inside the running pod, in
        its network and mount namespaces (its volumes, its read-only root),
        with the container's environment, user and privileges."""
        if pod.process is None or pod.process.poll() is not None:
            raise SimError(f"{pod.name} is not running: kubectl exec needs a running container")
        enter = [
            "nsenter",
            f"--target={pod.process.pid}",
            "--mount",
            "--net",
            f"--wdns={self._workdir(pod)}",
        ]
        return subprocess.run(
            [*enter, *self._setpriv(pod), "--", *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=self.env_of(pod),
        )

    def start(self, pod: Pod) -> None:
        if pod.process is not None and pod.process.poll() is None:
            raise SimError(f"{pod.name} is already running")
        env = self.env_of(pod)
        argv = mf.container_argv(pod.container, self.image, env)
        script = self._launch_script(pod)
        in_own_mount_ns = ["unshare", "--mount", "--propagation", "private", "sh", "-c"]
        pod.starts += 1
        with pod.log.open("ab") as log:
            log.write(f"--- start {pod.starts}: {shlex.join(argv)}\n".encode())
            log.flush()
            # Each of ip, unshare, sh and setpriv execs the next, so the PID
            # we hold is the server's own.
            pod.process = subprocess.Popen(
                ["ip", "netns", "exec", pod.netns, *in_own_mount_ns, script, "sh", *argv],
                env=env,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                cwd="/",
                start_new_session=True,
            )

    def start_all(self) -> None:
        for pod in self.pods.values():
            self.start(pod)

    def stop(self, pod: Pod) -> int | None:
        """Stop the pod as the kubelet does; returns its exit code."""
        self.stop_many([pod])
        return pod.process.returncode if pod.process else None

    def stop_many(self, pods: Sequence[Pod]) -> None:
        """SIGTERM every pod at once, then SIGKILL those still running when
        their grace period (capped at MAX_STOP_WAIT) runs out."""
        running = [p for p in pods if p.process is not None and p.process.poll() is None]
        for pod in running:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pod.process.pid, signal.SIGTERM)  # type: ignore[union-attr]
        start = time.monotonic()
        for pod in running:
            proc = pod.process
            assert proc is not None
            grace = float(pod.pod_spec.get("terminationGracePeriodSeconds", 30))
            left = start + min(grace, MAX_STOP_WAIT) - time.monotonic()
            try:
                proc.wait(timeout=max(left, 0.01))
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.kill(proc.pid, signal.SIGKILL)
                proc.wait(timeout=10)
        for pod in pods:
            if pod.process is not None:
                # Anything the server started lives in its session's group.
                with contextlib.suppress(ProcessLookupError, PermissionError):
                    os.killpg(pod.process.pid, signal.SIGKILL)

    def wipe_volumes(self, pod: Pod) -> None:
        """Replace each of the pod's PersistentVolumes by a new, empty one (a
        lost disk, or a PVC deleted and re-created)."""
        for claim in pod.sts["spec"].get("volumeClaimTemplates") or []:
            shutil.rmtree(pod.claim_dir(claim["metadata"]["name"]), ignore_errors=True)

    # -- looking at it from outside -------------------------------------------

    def probe_targets(self, pod: Pod, kinds: Sequence[str] = PROBE_KINDS) -> list[str]:
        targets = []
        for kind in kinds:
            probe = pod.container.get(kind)
            if probe is None:
                continue
            if "grpc" not in probe:
                raise SimError(f"{pod.name} {kind}: the simulation only runs gRPC probes")
            port = probe["grpc"]["port"]
            if not isinstance(port, int):
                raise mf.ManifestError(f"{pod.name} {kind}: grpc.port must be a number")
            service = probe["grpc"].get("service", "")
            timeout = probe.get("timeoutSeconds", 1)
            targets.append(f"{pod.name}/{kind}={pod.ip}:{port}/{service}@{timeout}")
        return targets

    def hub_run(self, args: Sequence[str], timeout: float = 60) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            ["ip", "netns", "exec", self.hub, sys.executable, str(HUBCTL), *args],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env={"PATH": os.environ.get("PATH", "/usr/bin:/bin")},
        )

    def probe(
        self, pods: Sequence[Pod], kinds: Sequence[str] = PROBE_KINDS, wait: float = 0.0
    ) -> tuple[bool, dict[str, str]]:
        """Probe like the kubelet from the node; with `wait`, until every
        probe succeeds or `wait` seconds pass."""
        targets = [t for p in pods for t in self.probe_targets(p, kinds)]
        proc = self.hub_run(["probe", "--wait", str(wait), *targets], timeout=wait + 30)
        if proc.returncode not in (0, 1) or not proc.stdout.strip():
            raise SimError(f"hubctl probe failed: {proc.stderr}")
        status: dict[str, str] = json.loads(proc.stdout)
        return proc.returncode == 0, status

    def wait_serving(self, pods: Sequence[Pod] | None = None, wait: float = 30.0) -> None:
        chosen = list(self.pods.values()) if pods is None else list(pods)
        ok, status = self.probe(chosen, wait=wait)
        if not ok:
            dead = {p.name: p.process.returncode for p in chosen if p.process and p.process.poll()}
            bad = {k: v for k, v in status.items() if v != "SERVING"}
            raise AssertionError(
                f"probes not SERVING after {wait}s: {bad}; exited pods: {dead}\n{self.logs()}"
            )

    def client(self, argv: Sequence[str], timeout: float = 30) -> subprocess.CompletedProcess[str]:
        """Run a command in the client namespace, which resolves the cluster's
        names as a pod in the same Kubernetes namespace would."""
        return subprocess.run(
            ["ip", "netns", "exec", self.client_ns, *argv],
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
            env=image_env(self.image, "client"),
        )

    def logs(self, lines: int = 30) -> str:
        out = []
        for pod in self.pods.values():
            text = pod.log.read_text(errors="replace") if pod.log.exists() else ""
            tail = "\n".join(text.splitlines()[-lines:])
            out.append(f"===== {pod.name} =====\n{tail}")
        return "\n".join(out)

    # -- cleanup ---------------------------------------------------------------

    def close(self) -> None:
        """Stop every process, delete every namespace and hosts file. Runs all
        steps even if some fail, then reports the failures."""
        errors: list[str] = []
        try:
            self.stop_many(list(self.pods.values()))
        except Exception as exc:
            errors.append(f"stopping pods: {exc!r}")
        for name in reversed(self._netns):
            try:
                _run(["ip", "netns", "delete", name])
            except Exception as exc:
                errors.append(str(exc))
        for etc in self._etc_dirs:
            shutil.rmtree(etc, ignore_errors=True)
        for stash in dict.fromkeys(self._stash_dirs):
            shutil.rmtree(stash, ignore_errors=True)
        self._stash_dirs.clear()
        self._netns.clear()
        self._etc_dirs.clear()
        if errors:
            raise SimError("cleanup: " + "; ".join(errors))


#: The `boot` fixture: rendered manifests in, a started Cluster out.
Boot = Callable[[mf.Manifests], Cluster]


def exit_codes(pods: Mapping[str, Pod]) -> dict[str, int | None]:
    return {n: (p.process.poll() if p.process else None) for n, p in pods.items()}


@contextlib.contextmanager
def booted(
    manifests: mf.Manifests, workdir: Path, prefix: str, image: mf.Image | None = None
) -> Iterator[Cluster]:
    cluster = Cluster(manifests, image or mf.read_image(), workdir, prefix)
    try:
        cluster.create()
        cluster.start_all()
        yield cluster
    finally:
        cluster.close()
