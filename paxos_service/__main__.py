"""``python -m paxos_service`` is the ``paxos`` command."""

from paxos_service.cli import main

raise SystemExit(main())
