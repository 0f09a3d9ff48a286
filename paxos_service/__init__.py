"""paxos-service adapters: gRPC servers, SQLite storage, client stub and CLI
around the pure protocol in :mod:`roles`."""

__version__ = "0.1.0"
