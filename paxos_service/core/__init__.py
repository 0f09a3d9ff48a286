"""The foundation every other layer stands on: configuration, the runtime seam
(transport, storage threads, randomness), the clock, structured logs, metric
definitions and the encoding of the replicated log's entries. Imports nothing
else of paxos_service."""
