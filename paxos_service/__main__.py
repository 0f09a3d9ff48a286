"""``python -m paxos_service`` is the ``paxos`` command."""

from paxos_service.cli.main import main

raise SystemExit(main())
