"""``python -m paxos_service.bench``."""

from paxos_service.bench.runner import main

raise SystemExit(main(prog="python -m paxos_service.bench"))
