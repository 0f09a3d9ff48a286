"""Test tooling that must never ship: not in the wheel, never imported by the product.

``pyproject.toml`` builds the wheel from ``paxos_service`` and ``roles`` only,
and an import-linter contract forbids either to import this package. It is
importable from a source checkout: the editable install (``pip install -e
'.[dev]'``) puts the repository root on ``sys.path``, and so does pytest; the
chaos harness sets ``PYTHONPATH`` to the repository root for the nodes it starts.

:mod:`paxos_testing.broken_acceptor`
    A deliberately broken acceptor, started as its own process
    (``python -m paxos_testing.broken_acceptor --mode promise-lower ...``), to
    prove that the chaos checkers catch an unsafe cluster.
"""
