"""The deterministic simulation of the real service code: a virtual-time
event loop (:mod:`.vloop`), an in-memory gRPC network (:mod:`.net`), a
simulated storage thread (:mod:`.executor`), the cluster built from the
product's own start functions (:mod:`.cluster`), its clients and nemesis
(:mod:`.workload`), the checkers (:mod:`.checkers`), one seeded run
(:mod:`.run`), the deliberately broken acceptors (:mod:`.broken`) and the
command ``python -m tests.simulation.realsim`` (``make sim``). See
docs/simulation.md."""
