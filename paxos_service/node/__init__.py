"""The drivers that run the pure roles of :mod:`roles` against the world: the
multi-Paxos log driver (leader), the learner's replica (apply loop, catch-up,
repair) and the acceptor's identity guard. No gRPC servicers here."""
