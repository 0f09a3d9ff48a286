from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.support.processes import Cluster


@pytest.fixture
def cluster(tmp_path: Path) -> Iterator[Cluster]:
    """An empty cluster; tests start the nodes they need. Every process is
    killed at the end, pass or fail."""
    c = Cluster(tmp_path)
    try:
        yield c
    finally:
        c.stop()


@pytest.fixture
def ns(request: pytest.FixtureRequest) -> str:
    """A key prefix of this test's own."""
    return f"{request.node.name}/"
