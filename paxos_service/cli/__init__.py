"""The ``paxos`` command: one subcommand per role, the local cluster, the
key-value and status tools. :func:`.main.main` is the entry point."""
