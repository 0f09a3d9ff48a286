"""How a pod's container is launched: its volumes (claims, emptyDirs,
projected Secrets), its securityContext (user, groups, privileges, read-only
root) and the shell script that builds its private mount namespace before
exec'ing the container's process. See netsim for what is simulated."""

from __future__ import annotations

import os
import shlex
import shutil
import sys
from collections.abc import Mapping
from pathlib import Path
from typing import Any

from . import manifests as mf
from .host import SimError
from .pods import Mount, Pod


def volume_mounts(pod: Pod, secrets: Mapping[str, Path]) -> list[Mount]:
    """Where each of the container's volumeMounts comes from: the pod's claim,
    a fresh emptyDir or a projected Secret, made ready as the kubelet would."""
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
            source = project_secret(pod, name, volumes[name]["secret"], fs_group, secrets)
            # The kubelet mounts Secret volumes read-only, whatever the mount says.
            mounts.append(Mount(source, vm["mountPath"], True))
            continue
        else:
            raise SimError(
                f"{pod.name}: volume {name!r} is neither a claim, an emptyDir nor a Secret"
            )
        mounts.append(Mount(source, vm["mountPath"], bool(vm.get("readOnly"))))
    return mounts


def project_secret(
    pod: Pod, volume: str, spec: mf.Obj, fs_group: Any, secrets: Mapping[str, Path]
) -> Path:
    """The files of Secret ``spec["secretName"]`` as the kubelet lays them
    out for this start of the pod (see netsim's module docstring)."""
    name = spec["secretName"]
    if spec.get("items"):
        raise SimError(f"{pod.name}: the simulation does not support Secret items")
    files = secrets.get(name)
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


def container_ids(pod: Pod, image: mf.Image) -> tuple[int, int, list[int], mf.Obj]:
    """The container's uid, gid and groups, and its securityContext."""
    pod_sc = pod.pod_spec.get("securityContext") or {}
    ctr_sc = pod.container.get("securityContext") or {}

    def pick(key: str) -> Any:
        return ctr_sc.get(key, pod_sc.get(key))

    uid = int(pick("runAsUser") if pick("runAsUser") is not None else image.uid)
    gid = int(pick("runAsGroup") if pick("runAsGroup") is not None else image.gid)
    if pick("runAsNonRoot") and uid == 0:
        raise mf.ManifestError(
            f"{pod.name}: runAsNonRoot is set but the container would run as uid 0; "
            "the kubelet refuses to start it (CreateContainerConfigError)"
        )
    groups = [int(g) for g in pod_sc.get("supplementalGroups") or []]
    if pod_sc.get("fsGroup") is not None:
        groups.insert(0, int(pod_sc["fsGroup"]))
    return uid, gid, groups, ctr_sc


def launch_script(
    pod: Pod, image: mf.Image, secrets: Mapping[str, Path], stash_dirs: list[Path]
) -> str:
    """The shell that sets up the pod's mount namespace, then execs the
    container's process (so the PID we hold is the server's). ``secrets``:
    the Secrets that exist; ``stash_dirs`` records what it keeps under /run,
    for the cleanup."""
    mounts = volume_mounts(pod, secrets)
    uid, _gid, _groups, ctr_sc = container_ids(pod, image)
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
        stash_dirs.append(stash.parent.parent)
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
    lines.append(f"cd {shlex.quote(container_workdir(pod, image))}")
    lines.append(f'exec {shlex.join(setpriv_prefix(pod, image))} -- "$@"')
    return "\n".join(lines)


def container_workdir(pod: Pod, image: mf.Image) -> str:
    """The directory the container starts in."""
    return str(pod.container.get("workingDir") or image.workdir)


def setpriv_prefix(pod: Pod, image: mf.Image) -> list[str]:
    """The container's user, groups and privileges, as a setpriv prefix."""
    uid, gid, groups, ctr_sc = container_ids(pod, image)
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
