"""Generated protobuf and gRPC code for paxos_service.v1 (see proto/). Never edit by hand."""
