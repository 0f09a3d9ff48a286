"""Durable state: the contract an acceptor needs from stable storage
(:mod:`.contract`), its SQLite implementation (:mod:`.sqlite`), and the group
committer that turns many votes into one fsync."""
