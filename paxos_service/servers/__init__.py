"""The gRPC servicers, one per role (acceptor, proposer, learner) plus the
key-value and operator services, and the start-up code that wires a node."""
