import sys

from paxos_testing.chaos.cli import main

sys.exit(main())
