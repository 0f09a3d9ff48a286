"""What every test run needs, whatever started it."""

from __future__ import annotations

import signal

# A shell starts a background job (`make test &`, a CI runner's step) with
# SIGINT ignored, and an ignored signal stays ignored across exec: every
# process a test starts would then ignore the Ctrl-C that the interrupt tests
# send it, and hang (seen: `paxos kv watch`, `paxos status --watch` and the
# bench ran on after SIGINT). Start children with Ctrl-C as a user's terminal
# delivers it.
if signal.getsignal(signal.SIGINT) is signal.SIG_IGN:
    signal.signal(signal.SIGINT, signal.default_int_handler)
