"""``python -m paxos_service`` is the ``paxos`` command."""

from paxos_service.cli.main import main

# Guarded: a learner's snapshot process (core/runtime.worker_process) is
# spawned, and spawn imports the parent's main module again.
if __name__ == "__main__":
    raise SystemExit(main())
