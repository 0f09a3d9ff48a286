"""The benchmark: ``python -m paxos_service.bench`` (``make bench``).

See :mod:`paxos_service.bench.runner` for what it does and
``docs/performance.md`` for results on the reference machine. The public
surface is :func:`main` (``main(argv) -> exit code``) and :func:`build_parser`.
"""

from paxos_service.bench._args import build_parser
from paxos_service.bench.runner import main

__all__ = ["build_parser", "main"]
