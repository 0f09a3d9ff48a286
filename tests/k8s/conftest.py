"""Fixtures for the k8s checks: rendered manifests and booted clusters."""

from __future__ import annotations

import itertools
import os
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
        cluster = netsim.Cluster(
            manifests, image, tmp_path / f"cluster{number}", prefix=f"pxk{os.getpid()}c{number}"
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
