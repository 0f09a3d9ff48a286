"""The Dockerfile, read statically: there is no Docker engine in CI."""

from __future__ import annotations

from . import manifests as mf


def test_multi_stage_on_slim_python_311(image: mf.Image) -> None:
    text = mf.DOCKERFILE.read_text()
    assert len(image.stages) >= 2, "a builder stage and a runtime stage"
    assert "ARG PYTHON_IMAGE=python:3.11-slim" in text
    assert all(stage.startswith("${PYTHON_IMAGE}") for stage in image.stages)
    # The builder builds a wheel, which is when hatch-protobuf generates the
    # gRPC code; the runtime stage installs wheels only.
    assert "pip wheel" in text
    assert "--no-index" in text


def test_one_entrypoint_and_a_non_root_user(image: mf.Image) -> None:
    assert image.entrypoint == ("paxos",)
    assert image.uid != 0
    assert image.gid != 0


def test_build_context_is_an_allowlist() -> None:
    """Local state (.venv, data/, caches, generated code) stays out of the
    build context."""
    lines = [
        line.strip()
        for line in (mf.REPO / ".dockerignore").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    ]
    assert lines[0] == "*"
    allowed = {line[1:].rstrip("/") for line in lines if line.startswith("!")}
    assert allowed == {"pyproject.toml", "README.md", "proto", "roles", "paxos_service"}
    assert "paxos_service/v1/*_pb2*.py" in lines
