"""Chaos testing: the real cluster in network namespaces, a seeded nemesis,
history checkers and a report. See docs/chaos.md.

    python -m paxos_testing.chaos --duration 60s --seed 7 --out chaos-out/run7

Modules: :mod:`~paxos_testing.chaos.harness` (namespaces, processes, iptables,
tmpfs, libfiu), :mod:`~paxos_testing.chaos.nodes` (the nodes and their
addresses), :mod:`~paxos_testing.chaos.host` (root, tools, and the cleanup of
dead runs), :mod:`~paxos_testing.chaos.schedule` (the seeded schedule),
:mod:`~paxos_testing.chaos.nemesis` (the faults),
:mod:`~paxos_testing.chaos.workload` (clients recording histories),
:mod:`~paxos_testing.chaos.checkers` (pure verdicts),
:mod:`~paxos_testing.chaos.report` and :mod:`~paxos_testing.chaos.timeline`
(the table, JSON and PNG), :mod:`~paxos_testing.chaos.run` (one run, start to
finish).
"""
