"""The shape of the house, checked: no import cycles, small files, and a wheel
that ships the product and nothing of the test tooling. The layers themselves
are import-linter contracts (pyproject.toml, run by ``make lint``)."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

from tests.architecture.imports import ROOT, cycles, graph

#: Above this a file holds more than one concept; split it along its concerns.
MAX_LINES = 600
SOURCE_DIRS = ("roles", "paxos_service", "paxos_testing", "tests")


def test_no_import_cycles_counting_every_import() -> None:
    found = cycles(graph())
    assert found == [], "import cycles:\n" + "\n".join(" <-> ".join(c) for c in found)


def test_the_cycle_finder_finds_a_cycle() -> None:
    edges = {"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}
    assert cycles(edges) == [["a", "b", "c"]]


def test_no_source_file_is_over_the_limit() -> None:
    too_long = {}
    for folder in SOURCE_DIRS:
        for path in (ROOT / folder).rglob("*.py"):
            if "_pb2" in path.name:
                continue
            lines = len(path.read_text().splitlines())
            if lines > MAX_LINES:
                too_long[str(path.relative_to(ROOT))] = lines
    assert too_long == {}


def test_the_wheel_ships_the_product_and_no_test_tooling(tmp_path: Path) -> None:
    """Build the real wheel, as a user's pip would, and read its file list."""
    subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--quiet", "--no-deps", "-w", str(tmp_path), "."],
        cwd=ROOT,
        check=True,
        timeout=600,
    )
    (wheel,) = tmp_path.glob("paxos_service-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    top = {name.split("/")[0] for name in names if not name.split("/")[0].endswith(".dist-info")}
    assert top == {"paxos_service", "roles"}
    assert "paxos_service/py.typed" in names and "roles/py.typed" in names
    assert "paxos_service/v1/paxos_pb2.py" in names
    assert not [n for n in names if "chaos" in n or "linearizab" in n or "broken" in n]
