"""No variable or flag of the product turns Paxos safety off.

The deliberately broken acceptor is test tooling: it lives in
``paxos_testing/`` (never in the wheel, never imported by the product) and
runs only through its own entry point, ``python -m paxos_testing.broken_acceptor``.
"""

from __future__ import annotations

import importlib
import json
import os
import subprocess
import sys
import tomllib
from collections.abc import Iterator
from pathlib import Path

import grpc
import pytest

from paxos_service.v1 import paxos_pb2 as pb
from paxos_service.v1 import paxos_pb2_grpc as pb_grpc
from tests.support.processes import Node, clean_env, free_port, wait_until

ROOT = Path(__file__).resolve().parents[2]
OLD_SWITCH = "PAXOS_TEST_BROKEN_ACCEPTOR"


def shipped_packages() -> list[str]:
    config = tomllib.loads((ROOT / "pyproject.toml").read_text())
    packages: list[str] = config["tool"]["hatch"]["build"]["targets"]["wheel"]["packages"]
    return packages


def shipped_files() -> list[Path]:
    """Every file the wheel is built from (hatch takes each package's whole tree)."""
    return sorted(
        path
        for package in shipped_packages()
        for path in (ROOT / package).rglob("*")
        if path.is_file() and "__pycache__" not in path.parts
    )


def test_the_wheel_ships_the_product_only() -> None:
    """On the old code paxos_service/broken_acceptor.py (PromiseIgnoringAcceptor,
    PAXOS_TEST_BROKEN_ACCEPTOR) was among the shipped files: this failed."""
    assert shipped_packages() == ["paxos_service", "roles"]
    files = shipped_files()
    assert files, "no shipped files found"
    assert not any(p.parts[len(ROOT.parts)] == "paxos_testing" for p in files)
    assert not [p for p in files if "broken" in p.name], "a broken acceptor module ships"
    offenders = []
    for path in files:
        if path.suffix not in {".py", ".pyi", ".md", ".txt", ".toml", ".cfg", ".json"}:
            continue
        text = path.read_text(errors="replace")
        if OLD_SWITCH in text or "PromiseIgnoringAcceptor" in text or "promise-lower" in text:
            offenders.append(str(path.relative_to(ROOT)))
    # paxos_service/chaos names the mode to pass it to the test entry point,
    # and starts that as a process; it holds no broken logic.
    allowed = {"paxos_testing/chaos/harness.py", "paxos_testing/chaos/nemesis.py"}
    assert set(offenders) <= allowed, offenders
    for name in offenders:
        text = (ROOT / name).read_text()
        assert OLD_SWITCH not in text and "PromiseIgnoringAcceptor" not in text, name


def test_no_product_module_mentions_the_old_switch() -> None:
    """On the old code broken_acceptor.py, acceptor_server.py (via it) and the
    chaos harness named PAXOS_TEST_BROKEN_ACCEPTOR: this failed."""
    found = [
        str(path.relative_to(ROOT))
        for package in ("paxos_service", "roles")
        for path in (ROOT / package).rglob("*.py")
        if OLD_SWITCH in path.read_text(errors="replace")
    ]
    assert found == []


def test_the_product_has_no_broken_acceptor_module() -> None:
    """On the old code paxos_service.broken_acceptor imported fine: this failed."""
    with pytest.raises(ModuleNotFoundError):
        importlib.import_module("paxos_service.broken_acceptor")


def prepare(address: str, round_: int) -> pb.PrepareResponse:
    with grpc.insecure_channel(address) as channel:
        request = pb.PrepareRequest(
            prepare=pb.Prepare(instance=1, ballot=pb.Ballot(round=round_, proposer_id=1)),
            space=pb.INSTANCE_SPACE_LOG,
        )
        response: pb.PrepareResponse = pb_grpc.AcceptorServiceStub(channel).Prepare(
            request, timeout=5
        )
        return response


def start(argv: list[str], log: Path, env: dict[str, str]) -> Node:
    address = argv[argv.index("--listen") + 1]
    node = Node("acceptor", 0, address, argv, log)
    with log.open("ab") as out:
        node.process = subprocess.Popen(
            argv, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, env=env
        )
    return node


def acceptor_args(tmp_path: Path) -> list[str]:
    return [
        "--id",
        "0",
        "--listen",
        f"127.0.0.1:{free_port()}",
        "--insecure",
        "--db",
        str(tmp_path / "acceptor-0.db"),
    ]


@pytest.fixture
def nodes() -> Iterator[list[Node]]:
    started: list[Node] = []
    yield started
    for node in started:
        if node.alive():
            node.kill9()


def test_the_product_ignores_the_old_variable(tmp_path: Path, nodes: list[Node]) -> None:
    """`paxos acceptor` with PAXOS_TEST_BROKEN_ACCEPTOR=promise-lower is a
    correct acceptor: it rejects a Prepare below its promise.

    On the old code that acceptor promised the lower ballot (and logged
    TEST-ONLY BROKEN ACCEPTOR): the assertion on the reject failed."""
    env = clean_env() | {OLD_SWITCH: "promise-lower"}
    argv = [sys.executable, "-m", "paxos_service", "acceptor", *acceptor_args(tmp_path)]
    node = start(argv, tmp_path / "acceptor.log", env)
    nodes.append(node)
    node.wait_healthy()
    assert prepare(node.address, 5).HasField("promise")
    assert prepare(node.address, 3).HasField("reject")
    assert "BROKEN" not in node.log()


def test_the_test_entry_point_runs_a_broken_acceptor(tmp_path: Path, nodes: list[Node]) -> None:
    """``python -m paxos_testing.broken_acceptor --mode promise-lower ARGS``
    runs the real acceptor server with the broken role, and says so."""
    env = clean_env()
    # The chaos harness does the same: the repository root on PYTHONPATH.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(ROOT), env.get("PYTHONPATH")]))
    argv = [sys.executable, "-m", "paxos_testing.broken_acceptor", "--mode", "promise-lower"]
    node = start([*argv, *acceptor_args(tmp_path)], tmp_path / "broken.log", env)
    nodes.append(node)
    node.wait_healthy()
    assert prepare(node.address, 5).HasField("promise")
    assert prepare(node.address, 3).HasField("promise")  # broken: below its promise
    wait_until(lambda: "TEST-ONLY BROKEN ACCEPTOR" in node.log(), 10, "the warning")
    warnings = [
        json.loads(line)
        for line in node.log().splitlines()
        if line.startswith("{") and "TEST-ONLY BROKEN ACCEPTOR" in line
    ]
    assert warnings and all(w["level"] == "warning" for w in warnings), node.log()
