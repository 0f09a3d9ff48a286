import sys

from paxos_service.chaos.cli import main

sys.exit(main())
