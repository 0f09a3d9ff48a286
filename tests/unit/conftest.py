"""Fixtures for the unit tests: a key-value state machine on a fresh SQLite file.

They live here rather than in ``kv_support`` because pytest finds fixtures by
name only in the test module or a conftest.py, and the state machine tests
are split over several modules.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from paxos_service.kv import KvStateMachine
from tests.unit.kv_support import Log


@pytest.fixture
def db(tmp_path: Path) -> Path:
    return tmp_path / "kv.db"


@pytest.fixture
def sm(db: Path) -> Iterator[KvStateMachine]:
    machine = KvStateMachine.open(db)
    yield machine
    machine.close()


@pytest.fixture
def log(sm: KvStateMachine) -> Log:
    return Log(sm)
