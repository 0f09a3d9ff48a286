"""``python -m paxos_testing.linearizability HISTORY.jsonl``."""

import sys

from paxos_testing.linearizability.cli import main

sys.exit(main())
