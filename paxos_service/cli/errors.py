"""How a ``paxos`` command fails: one line ``paxos: error: ...`` on stderr and
a non-zero exit, never a traceback."""

from __future__ import annotations

import sys
from typing import NoReturn

EXIT_ERROR = 1
EXIT_USAGE = 2


def fail(message: str, code: int = EXIT_ERROR) -> NoReturn:
    print(f"paxos: error: {message}", file=sys.stderr)
    raise SystemExit(code)
