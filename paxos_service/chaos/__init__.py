"""Chaos testing: the real cluster in network namespaces, a seeded nemesis,
history checkers and a report. See docs/chaos.md.

    python -m paxos_service.chaos --duration 60s --seed 7 --out chaos-out/run7

Modules: :mod:`~paxos_service.chaos.harness` (namespaces, processes, iptables,
tmpfs, libfiu), :mod:`~paxos_service.chaos.nemesis` (the seeded schedule and
the faults), :mod:`~paxos_service.chaos.workload` (clients recording histories),
:mod:`~paxos_service.chaos.checkers` (pure verdicts),
:mod:`~paxos_service.chaos.report` and :mod:`~paxos_service.chaos.timeline`
(the table, JSON and PNG), :mod:`~paxos_service.chaos.run` (one run, start to
finish).
"""
