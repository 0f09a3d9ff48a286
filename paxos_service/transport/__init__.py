"""gRPC plumbing: servers and channels (TLS or not), peer connections, the
metrics interceptor and HTTP endpoint, and the conversion between protobuf
messages and :mod:`roles` values (:mod:`.wire`)."""
