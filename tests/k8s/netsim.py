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

The pieces: host (root, the host's tools), pods (what a pod is), network
(namespaces, bridge, hosts files), launch (volumes, securityContext, the
launch script); this module boots them as a Cluster.
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

from . import launch, network
from . import manifests as mf
from .host import SimError, require_root_and_iproute2, run
from .pods import CLIENT_IP, VENV_BIN, Pod, image_env, plan_pods

__all__ = [
    "VENV_BIN",
    "Boot",
    "Cluster",
    "Pod",
    "SimError",
    "booted",
    "exit_codes",
    "require_root_and_iproute2",
]

HUBCTL = Path(__file__).resolve().parent / "hubctl.py"
PROBE_KINDS = ("startupProbe", "livenessProbe", "readinessProbe")
#: The tests wait at most this long for a pod to stop after SIGTERM, even if
#: the manifest's grace period is longer.
MAX_STOP_WAIT = 10.0


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
        self.pods.update(plan_pods(self.manifests, self.workdir, self.prefix))
        self.hosts = network.dns_records(self.manifests, self.pods)

        self.hub = network.add_netns(f"{self.prefix}-hub", self._netns)
        network.make_bridge(self.hub)
        endpoints = [(p.netns, p.ip, p.name) for p in self.pods.values()]
        self.client_ns = f"{self.prefix}-client"
        endpoints.append((self.client_ns, CLIENT_IP, "client"))
        for index, (netns, ip, hostname) in enumerate(endpoints):
            network.add_netns(netns, self._netns)
            network.plug(self.hub, f"v{index}", netns, ip)
            network.write_etc(netns, hostname, self.pods, self.hosts, self._etc_dirs)

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
            f"--wdns={launch.container_workdir(pod, self.image)}",
        ]
        return subprocess.run(
            [*enter, *launch.setpriv_prefix(pod, self.image), "--", *argv],
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
        script = launch.launch_script(pod, self.image, self.secrets, self._stash_dirs)
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
                run(["ip", "netns", "delete", name])
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
