"""Fixtures for the k8s checks: rendered manifests and booted clusters."""

from __future__ import annotations

import itertools
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from . import manifests as mf
from . import netsim

_cluster_numbers = itertools.count()


@pytest.fixture(scope="session")
def rendered() -> dict[str, mf.Manifests]:
    """Every kustomization in k8s/, rendered once per session."""
    try:
        return {name: mf.load(name) for name in mf.KUSTOMIZATIONS}
    except mf.ManifestError as exc:
        pytest.fail(str(exc), pytrace=False)


@pytest.fixture(scope="session")
def image() -> mf.Image:
    return mf.read_image()


def make_certificates(manifests: mf.Manifests, out: Path) -> Path:
    """The Secret the manifests mount, made as k8s/README.md says for a
    cluster without cert-manager: `paxos certs`, valid for every name cluster
    DNS answers for the pods and Services. Returns its --out directory."""
    hosts = ",".join(mf.dns_names(manifests))
    paxos = str(netsim.VENV_BIN / "paxos")
    proc = subprocess.run(
        [paxos, "certs", "--out", str(out), "--hosts", hosts],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    if proc.returncode != 0:
        pytest.fail(f"paxos certs failed: {proc.stderr}", pytrace=False)
    return out


@pytest.fixture
def boot(tmp_path: Path, image: mf.Image) -> Iterator[netsim.Boot]:
    """Boot rendered manifests (see netsim); everything is torn down when
    the test ends, however it ends."""
    try:
        netsim.require_root_and_iproute2()
    except netsim.SimError as exc:
        pytest.fail(str(exc), pytrace=False)
    clusters: list[netsim.Cluster] = []

    def make(manifests: mf.Manifests) -> netsim.Cluster:
        number = next(_cluster_numbers)
        workdir = tmp_path / f"cluster{number}"
        pki = make_certificates(manifests, workdir / "pki")
        cluster = netsim.Cluster(
            manifests,
            image,
            workdir,
            prefix=f"pxk{os.getpid()}c{number}",
            secrets={mf.PEER_TLS_SECRET: pki / "peer"},
            client_tls=pki / "client",
        )
        clusters.append(cluster)  # before create(), so a half-built one is cleaned up too
        cluster.create()
        cluster.start_all()
        return cluster

    yield make
    errors = []
    for cluster in clusters:
        try:
            cluster.close()
        except netsim.SimError as exc:
            errors.append(str(exc))
    if errors:
        pytest.fail("; ".join(errors), pytrace=False)
